"""Pruning: channel pruning over dependency groups, unstructured and N:M sparsity, sensitivity.

Modules: ``groups`` (the ``channel-groups`` analysis: spaces, units, groups), ``channel_rule``
(the rule contract and the cut of one node), ``layers``, ``elementwise`` and ``reshaping`` (how
each op couples channels and how it is cut), ``rules`` (the table of rules and the drivers),
``selection`` (importance, ratios, ``round_to``, balanced choice), ``compensation`` (removed
channels' mean contributions moved into the next biases), ``channels`` (the ``prune-channels``
pass), ``magnitude`` (``prune-magnitude`` and ``prune-nm``) and ``sensitivity``
(``prune-sensitivity`` and the budgeted search behind ``prune-channels{budget=...}``).
"""
