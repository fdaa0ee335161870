"""Architecture substitution: cheaper building blocks in place of expensive ones.

Modules: ``common`` (the shared pass body: MACs, parameters and output error before and after),
``depthwise`` (``substitute-depthwise-separable``), ``lowrank`` (``factorize-lowrank``) and
``activation`` (``substitute-activation``). Each substitution is initialised by a least-squares fit
of the original weights; ``distill{}`` afterwards recovers the accuracy the fit loses.
"""
