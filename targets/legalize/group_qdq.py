"""``group-qdq``: QDQ groups become ``edgec``-domain integer nodes (the kinds of
:mod:`edgec.targets.integer`), so the legal graph says what runs as integers and with which
parameters.

Two rule sets, applied in order. The groups: for every kind, ``Q(f)`` and, for kinds that fuse
it, ``Q(Relu|Clip(f))``, where ``f`` is what the kind lowers (a Conv, an Add, a DQ → Relu, ...);
the kind's plan is the rule's check (its refusal is the reason) and its nodes the replacement.
Then the boundary: every QuantizeLinear left (of a float tensor) and every DequantizeLinear of an
int8 activation left (read by a float node or a graph output) become integer quantize/dequantize
nodes. A refused group stays float, with its reason in the pass statistics and in the graph's
metadata (the lowering reports it per node); when the quantize pass had planned that node as int8,
the refusal is an error (collected by ``edgec check``): the build could not honour the plan.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import Fix, UnsupportedNodeError
from edgec.ir import EdgeGraph, static_shape
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.precision import expected, planned
from edgec.rewrite import Match, Op, Optional, Rule, RuleSet, Var
from edgec.targets.integer.kernels import BOUNDARY_KINDS, GROUP_KINDS
from edgec.targets.integer.kind import IntegerKind
from edgec.targets.integer.qdq import Group, Refuse, output_params

__all__ = ["REFUSALS_KEY", "GroupQdq", "boundary_rules", "group_rules", "refusals"]

# Graph metadata: float node name → why its group did not become integer kernels.
REFUSALS_KEY = "edgec.integer.refused"
_ACTIVATIONS = ("Relu", "Clip")


def _rule_name(kind: IntegerKind) -> str:
    return kind.op_type or type(kind).__name__


def _quantized(inner: Op) -> Op:
    return Op("QuantizeLinear", inner, Var("y_scale"), Optional(Var("y_zero_point")), name="q")


def group_rules(rounding: str) -> RuleSet:
    """The group rules of every kind (the plan made by a rule's check is what it replaces with)."""
    plans: dict[int, list[gs.Node]] = {}

    def rule(kind: IntegerKind, name: str, pattern: Op) -> Rule:
        def check(match: Match, graph: EdgeGraph) -> str | None:
            q = match["q"]
            try:
                group = Group(match["f"], match.nodes.get("act"), q.outputs[0], *output_params(q), rounding)
                plans[id(q)] = kind.plan(group, graph)
            except Refuse as why:
                return str(why)
            return None

        return Rule(name, pattern, lambda match, graph: plans.pop(id(match["q"])), check)

    rules = []
    for kind in GROUP_KINDS:
        for inner in kind.group_patterns():
            if kind.fuses_activation:
                act = Op(_ACTIVATIONS, inner, Optional(Var("act_min")), Optional(Var("act_max")), name="act")
                rules.append(rule(kind, f"{_rule_name(kind)}+activation", _quantized(act)))
            rules.append(rule(kind, _rule_name(kind), _quantized(inner)))
    return RuleSet(rules)


def boundary_rules(rounding: str) -> RuleSet:
    """The QuantizeLinear and DequantizeLinear that are left, as integer quantize/dequantize."""
    plans: dict[int, list[gs.Node]] = {}

    def rule(kind: IntegerKind, pattern: Op) -> Rule:
        def check(match: Match, graph: EdgeGraph) -> str | None:
            node = match["f"]
            try:  # boundary kinds read their own parameters: the group's are unused
                plans[id(node)] = kind.plan(Group(node, None, node.outputs[0], 0.0, 0, rounding), graph)
            except Refuse as why:
                return str(why)
            return None

        return Rule(_rule_name(kind), pattern, lambda match, graph: plans.pop(id(match["f"])), check)

    return RuleSet([rule(kind, pattern) for kind in BOUNDARY_KINDS for pattern in kind.group_patterns()])


def _float_node(q: gs.Node) -> gs.Node | None:
    """The float node of the group a QuantizeLinear ends (through a foldable Relu/Clip)."""
    node = q.inputs[0].inputs[0] if q.inputs[0].inputs else None
    if node is not None and node.op in _ACTIVATIONS and node.inputs[0].inputs:
        inner = node.inputs[0].inputs[0]
        if inner.op != "DequantizeLinear" and len(node.inputs[0].outputs) == 1:
            return inner
    return node


def _error(qdq: EdgeGraph, legal: EdgeGraph, seed: int) -> float:
    """Largest output difference between the integer nodes (numpy reference) and onnxruntime
    running the QDQ graph, on seeded random inputs."""
    from edgec.targets.integer.reference import run_reference
    from edgec.verify import random_inputs, run_onnx

    feeds = random_inputs(qdq, seed=seed)
    expected = run_onnx(qdq.to_onnx(), feeds)
    got = run_reference(legal, feeds)
    return max(float(np.max(np.abs(got[name] - value), initial=0.0)) for name, value in expected.items())


def refusals(graph: EdgeGraph) -> dict[str, str]:
    """Float node name → why ``group-qdq`` left its group in float (from the graph's metadata)."""
    text = graph.info.metadata.get(REFUSALS_KEY)
    return dict(json.loads(text)) if text else {}


@register
@dataclass(frozen=True)
class GroupQdq(Pass):
    """Replaces QDQ groups by edgec integer nodes holding their parameters; refused groups stay float."""

    name: ClassVar[str] = "group-qdq"
    # The integer nodes are edgec's own ops (onnxruntime cannot run them) and requantize in fixed
    # point: with verification on, the pass measures its own error (the numpy reference of the
    # legal graph against onnxruntime on the QDQ graph, ``max_abs_error_vs_qdq``).
    lossless: ClassVar[bool] = False
    rounding: Literal["single", "double"] = "single"

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        before = graph.copy() if ctx.verify else None
        pools = [n for n in graph.nodes if n.op in ("AveragePool", "GlobalAveragePool")]
        if any(static_shape(node.inputs[0]) is None for node in pools):
            ctx.analyses.get("shapes", graph)  # a pool's divisor needs its input shape
        groups = group_rules(self.rounding).apply(graph)
        refused: dict[str, tuple[str, str]] = {}
        for _, q_name, reason in groups.refused:
            q = next((n for n in graph.nodes if n.name == q_name), None)
            node = _float_node(q) if q is not None else None
            if node is not None and node.name not in refused:
                refused[node.name] = (node.op, reason)
        boundary = boundary_rules(self.rounding).apply(graph)
        for _, name, reason in boundary.refused:
            node = next((n for n in graph.nodes if n.name == name), None)
            if node is not None and not isinstance(node.inputs[0], gs.Constant):  # not a weight
                refused.setdefault(name, (node.op, reason))
        if refused:
            graph.info.metadata[REFUSALS_KEY] = json.dumps(
                {name: reason for name, (_, reason) in sorted(refused.items())}, separators=(",", ":")
            )
        self._refuse_planned(graph, refused, ctx)
        kinds = Counter(node.op for node in graph.nodes if node.domain == "edgec")
        stats: dict[str, Any] = {
            "groups": groups.total,
            "boundary": boundary.total,
            "integer_nodes": dict(sorted(kinds.items())),
            "rounding": self.rounding,
        }
        if refused:
            stats["refused"] = [
                {"node": name, "op": op, "reason": reason} for name, (op, reason) in sorted(refused.items())
            ]
        changed = groups.total + boundary.total > 0
        if before is not None and changed:
            stats["max_abs_error_vs_qdq"] = _error(before, graph, ctx.seed)
        return PassResult(graph, changed=changed, stats=stats)

    @staticmethod
    def _refuse_planned(graph: EdgeGraph, refused: dict[str, tuple[str, str]], ctx: PassContext) -> None:
        """A node the quantize pass planned as int8 that stays float would fail the build."""
        decisions = planned(graph)
        target = ctx.target or "the target"
        for name, (op, reason) in sorted(refused.items()):
            decision = decisions.get(name, "")
            if (expected(decision) or {}).get("precision") != "int8":
                continue
            advice = "quantize the float model for this target, which keeps this node in float"
            fix = Fix("--target", ctx.target, advice) if ctx.target else Fix(advice=advice)
            ctx.refuse(
                UnsupportedNodeError(
                    name,
                    op,
                    f"it was quantized as {decision}, but {target} cannot run it as integers: {reason}",
                    fix,
                )
            )
