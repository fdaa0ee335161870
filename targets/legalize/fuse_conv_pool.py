"""``fuse-conv-pool``: an integer convolution whose only reader is a pooling layer becomes one
``edgec.IntegerConvMaxPool`` / ``edgec.IntegerConvAveragePool`` node (:mod:`edgec.targets.integer.conv_pool`),
lowered as one kernel that pools in the conv's output loop, so the pre-pool tensor, usually the
largest activation of a small CNN, never lives in the arena.

The pool's windows must tile its input (kernel equal to stride, no padding): each conv output is
then computed once, inside the one pooled pixel that reads it. Overlapping windows would compute
the shared conv outputs twice, a global pool would hold the whole conv output anyway, and a 1-D
convolution has no 2-D pool: those are refused, with the reason, and stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, static_shape
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.rewrite import Const, Match, Op, Rule, RuleSet
from edgec.targets.integer.conv_pool import FusedConvPool, IntegerConvAveragePool, IntegerConvMaxPool

__all__ = ["FuseConvPool", "fusion_rules", "pool_refusal"]

_AUTO_PAD_OK = ("NOTSET", b"NOTSET")


def pool_refusal(conv: gs.Node, pool: gs.Node) -> str | None:
    """Why ``pool`` (reading ``conv``'s output) cannot be fused into it, ``None`` if it can."""
    shape = static_shape(conv.inputs[0])
    if shape is None or len(shape) != 4:
        return f"'{conv.name}' is not a 2-D convolution with a static input shape"
    if not isinstance(conv.inputs[1], gs.Constant):
        return (
            f"'{conv.name}' reads its weight stored sparse (sparse-weights): its kernel walks output "
            "channels, not pooled pixels (--no-sparse-weights keeps the weight dense and fuses)"
        )
    kernel = [int(k) for k in pool.attrs.get("kernel_shape", ())]
    if len(kernel) != 2:
        return f"'{pool.name}' is a global pool: it reads the whole conv output, fusing saves nothing"
    strides = [int(s) for s in pool.attrs.get("strides", [1, 1])]
    if strides != kernel:
        return (
            f"'{pool.name}' has kernel {kernel} and strides {strides}: windows that do not tile the "
            "input would compute shared conv outputs twice"
        )
    if (
        any(int(p) for p in pool.attrs.get("pads", ()))
        or pool.attrs.get("auto_pad", "NOTSET") not in _AUTO_PAD_OK
    ):
        return f"'{pool.name}' is padded"
    if pool.attrs.get("ceil_mode", 0) or any(int(d) != 1 for d in pool.attrs.get("dilations", ())):
        return f"'{pool.name}' uses ceil_mode or dilations"
    if any(out.outputs for out in pool.outputs[1:]):
        return f"'{pool.name}' has a second output that is used"
    return None


def fusion_rules() -> RuleSet:
    """``IntegerConv → MaxPool`` and ``IntegerConv → IntegerAveragePool``, each fused when
    :func:`pool_refusal` accepts it."""
    plans: dict[int, gs.Node] = {}

    def rule(name: str, kind: FusedConvPool, pattern: Op) -> Rule:
        def check(match: Match, graph: EdgeGraph) -> str | None:
            conv, pool = match["conv"], match["pool"]
            reason = pool_refusal(conv, pool)
            if reason is None:
                plans[id(pool)] = kind.fuse(graph, conv, pool, pool.outputs[0])
            return reason

        return Rule(name, pattern, lambda match, graph: [plans.pop(id(match["pool"]))], check)

    conv = Op("IntegerConv", any_inputs=True, name="conv")
    average = Op(
        "IntegerAveragePool", conv, Const("divisor"), Const("multiplier"), Const("shift"), name="pool"
    )
    return RuleSet(
        [
            rule("conv+max-pool", IntegerConvMaxPool(), Op("MaxPool", conv, name="pool")),
            rule("conv+average-pool", IntegerConvAveragePool(), average),
        ]
    )


@register
@dataclass(frozen=True)
class FuseConvPool(Pass):
    """Fuses an integer convolution and the pool that alone reads it into one node, one kernel."""

    name: ClassVar[str] = "fuse-conv-pool"
    # The fused nodes are edgec's own ops (onnxruntime cannot run them); with verification on the
    # pass measures its own error: the numpy reference of the graph before and after (0 expected).
    lossless: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        before = graph.copy() if ctx.verify else None
        report = fusion_rules().apply(graph)
        stats: dict[str, Any] = {"fused": report.total, **report.stats()}
        stats["nodes"] = [
            {"conv": node.name, "pool": str(node.attrs["pool_node"]), "kind": node.op}
            for node in graph.nodes
            if node.op in ("IntegerConvMaxPool", "IntegerConvAveragePool")
        ]
        if before is not None and report.total:
            from edgec.targets.integer.reference import reference_difference

            stats["max_abs_difference"] = reference_difference(before, graph, ctx.seed)
        return PassResult(graph, changed=report.total > 0, stats=stats)
