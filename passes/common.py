"""What the pass families share: the rule-set pass and on-demand shape inference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult
from edgec.rewrite import RuleSet


def refresh_shapes(graph: EdgeGraph, ctx: PassContext, ops: frozenset[str] | set[str]) -> None:
    """Brings the inferred shapes up to date (the cached ``shapes`` analysis) when a node of
    ``ops`` is present; when inference fails, shapes stay as they were, so the checks that need
    them refuse instead of guessing."""
    if any(node.op in ops for node in graph.nodes):
        ctx.analyses.get("shapes", graph)


@dataclass(frozen=True)
class RewritePass(Pass):
    """Base of passes that apply one rule set: ``rules`` is the data, the driver is shared.

    Subclasses set ``rules``, the stats key ``counter`` (``fused``, ``merged``, ...) and the ops
    whose checks need inferred shapes (``needs_shapes``).
    """

    rules: ClassVar[RuleSet]
    counter: ClassVar[str] = "applied"
    needs_shapes: ClassVar[frozenset[str]] = frozenset()

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        refresh_shapes(graph, ctx, self.needs_shapes)
        report = self.rules.apply(graph)
        return PassResult(
            graph, changed=report.total > 0, stats={self.counter: report.total, **report.stats()}
        )
