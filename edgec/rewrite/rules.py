"""Rules (pattern, check, replacement) and the driver that applies a rule set to a graph."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.rewrite.pattern import Match, Op, match_pattern

Check = Callable[[Match, EdgeGraph], "str | None"]
Replace = Callable[[Match, EdgeGraph], "list[gs.Node]"]


def always(match: Match, graph: EdgeGraph) -> str | None:
    """A check that accepts every match."""
    return None


@dataclass(frozen=True)
class Rule:
    """A rewrite as data: ``pattern`` to find, ``check`` that returns ``None`` to accept or the
    reason to refuse, and ``replace`` that returns the new nodes.

    The replacement's nodes must write the match's output tensors (``match.outputs``) or forward
    them with :func:`forward`; the matched nodes are detached before ``replace`` runs.
    """

    name: str
    pattern: Op
    replace: Replace
    check: Check = always


@dataclass
class RewriteReport:
    """How often each rule applied and why matches were refused (rule, node, reason)."""

    applied: Counter = field(default_factory=Counter)
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.applied.values())

    def stats(self) -> dict:
        stats: dict = {"applied": dict(sorted(self.applied.items()))}
        if self.refused:
            stats["refused"] = [
                {"rule": rule, "node": node, "reason": reason} for rule, node, reason in self.refused
            ]
        return stats


def forward(match: Match, graph: EdgeGraph, old: gs.Tensor, new: gs.Tensor) -> list[gs.Node]:
    """Makes every use of ``old`` (an output of the match) read ``new`` instead.

    If ``old`` is a graph output, the output keeps its name: ``new`` is renamed when it is a plain
    intermediate, otherwise an Identity node is returned to write ``old``.
    """
    for consumer in list(old.outputs):
        # Index by index: graphsurgeon's synchronized input lists cannot take a slice assignment.
        for index, tensor in enumerate(list(consumer.inputs)):
            if tensor is old:
                consumer.inputs[index] = new
    if not graph.is_graph_output(old):
        return []
    renamable = (
        isinstance(new, gs.Variable)
        and new.inputs
        and not any(new is t for t in graph.inputs)
        and not graph.is_graph_output(new)
    )
    if renamable:
        new.name, old.name = old.name, f"{old.name}__replaced"
        graph.gs.outputs[:] = [new if t is old else t for t in graph.gs.outputs]
        return []
    return [gs.Node("Identity", name=graph.fresh_name("identity"), inputs=[new], outputs=[old])]


class RuleSet:
    """An ordered list of rules applied by one driver, to a fixed point."""

    def __init__(self, rules: list[Rule], max_rounds: int = 64) -> None:
        self.rules = list(rules)
        self.max_rounds = max_rounds
        self._by_op: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for op in rule.pattern.op_types():
                self._by_op.setdefault(op, []).append(rule)

    def apply(self, graph: EdgeGraph) -> RewriteReport:
        """Applies the rules until none matches; returns what applied and what was refused."""
        report = RewriteReport()
        for _ in range(self.max_rounds):
            refused_before = len(report.refused)
            if not self._apply_once(graph, report):
                break
            del report.refused[refused_before:]  # refusals are re-collected on the next round
        return report

    def _apply_once(self, graph: EdgeGraph, report: RewriteReport) -> bool:
        graph.gs.toposort()
        graph_outputs = {id(t) for t in graph.outputs}
        removed: set[int] = set()
        changed = False
        for node in list(graph.nodes):
            if id(node) in removed:
                continue
            for rule in self._by_op.get(node.op, ()):
                match = match_pattern(rule.pattern, node, graph_outputs)
                if match is None:
                    continue
                reason = rule.check(match, graph)
                if reason is not None:
                    report.refused.append((rule.name, node.name, reason))
                    continue
                for matched in match.matched:
                    matched.inputs.clear()
                    matched.outputs.clear()
                    removed.add(id(matched))
                graph.gs.nodes.extend(rule.replace(match, graph))
                graph_outputs = {id(t) for t in graph.outputs}
                report.applied[rule.name] += 1
                changed = True
                break
        if changed:
            graph.cleanup()
        return changed
