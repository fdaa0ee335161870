"""Operator fusion: fold normalisation, scales, shifts and padding into Conv and Gemm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var

_CONV_BN = Op(
    "BatchNormalization",
    Op("Conv", Var("x"), Const("w"), Optional(Const("b")), name="conv"),
    Const("scale"),
    Const("shift"),
    Const("mean"),
    Const("var"),
    name="bn",
)


def _inference_batchnorm(match: Match, graph: EdgeGraph) -> str | None:
    bn = match["bn"]
    if bn.attrs.get("training_mode", 0):
        return "BatchNormalization is in training mode"
    if len(match.outputs) != 1:
        return "BatchNormalization also outputs running statistics"
    return None


def _fold_conv_bn(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """w' = w * gamma / sqrt(var + eps) (per output channel); b' = (b - mean) * gamma /
    sqrt(var + eps) + beta."""
    conv = match["conv"]
    weights = match.const("w").astype(np.float64)
    bias = match.const("b")
    bias = np.zeros(weights.shape[0]) if bias is None else bias.astype(np.float64)
    epsilon = float(match["bn"].attrs.get("epsilon", 1e-5))
    factor = match.const("scale") / np.sqrt(match.const("var").astype(np.float64) + epsilon)
    dtype = match.const("w").dtype
    new_w = graph.add_constant(
        f"{conv.name}_w", (weights * factor.reshape(-1, *[1] * (weights.ndim - 1))).astype(dtype)
    )
    new_b = graph.add_constant(
        f"{conv.name}_b", ((bias - match.const("mean")) * factor + match.const("shift")).astype(dtype)
    )
    return [
        gs.Node(
            "Conv",
            name=conv.name,
            attrs=dict(conv.attrs),
            inputs=[match["x"], new_w, new_b],
            outputs=match.outputs,
        )
    ]


CONV_BN_RULES = RuleSet([Rule("conv-bn", _CONV_BN, _fold_conv_bn, _inference_batchnorm)])


@register
@dataclass(frozen=True)
class FuseConvBatchNorm(Pass):
    """Folds an inference BatchNormalization into the preceding Conv's weights and bias."""

    name: ClassVar[str] = "fuse-conv-bn"
    lossless: ClassVar[bool] = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        report = CONV_BN_RULES.apply(graph)
        return PassResult(graph, changed=report.total > 0, stats={"fused": report.total, **report.stats()})
