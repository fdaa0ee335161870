"""The rewrite DSL: patterns, rules as data (pattern → check → replacement), and their driver."""

from edgec.rewrite.pattern import Const, Match, Op, Optional, Var, match_pattern
from edgec.rewrite.rules import RewriteReport, Rule, RuleSet, always, forward

__all__ = [
    "Const",
    "Match",
    "Op",
    "Optional",
    "RewriteReport",
    "Rule",
    "RuleSet",
    "Var",
    "always",
    "forward",
    "match_pattern",
]
