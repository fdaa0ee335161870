"""Fold inference BatchNormalization into the Conv, Gemm or MatMul that feeds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.common import RewritePass
from edgec.passes.fusion.common import is_float, rank
from edgec.pm import register
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var


def _batchnorm_check(match: Match, graph: EdgeGraph, channels: int) -> str | None:
    """Why the BatchNormalization ``bn`` cannot be folded into ``channels`` output channels."""
    bn = match["bn"]
    if bn.attrs.get("training_mode", 0):
        return "BatchNormalization is in training mode"
    if len(match.outputs) != 1:
        return "BatchNormalization also outputs running statistics"
    # Legacy BN with spatial=0 normalises per activation, not per channel.
    for part in ("scale", "shift", "mean", "var"):
        if match.const(part).shape != (channels,):
            return f"BatchNormalization {part} has shape {list(match.const(part).shape)}, not [{channels}]"
    return None


def _bn_factor(match: Match) -> np.ndarray:
    epsilon = float(match["bn"].attrs.get("epsilon", 1e-5))
    return match.const("scale") / np.sqrt(match.const("var").astype(np.float64) + epsilon)


# ----- fuse-conv-bn ----------------------------------------------------------------------------

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
    if not is_float(match.const("w")):
        return "Conv weights are not floating point"
    return _batchnorm_check(match, graph, match.const("w").shape[0])


def _fold_conv_bn(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """w' = w * gamma / sqrt(var + eps) (per output channel); b' = (b - mean) * gamma /
    sqrt(var + eps) + beta."""
    conv = match["conv"]
    weights = match.const("w").astype(np.float64)
    bias = match.const("b")
    bias = np.zeros(weights.shape[0]) if bias is None else bias.astype(np.float64)
    factor = _bn_factor(match)
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
class FuseConvBatchNorm(RewritePass):
    """Folds an inference BatchNormalization into the preceding Conv's weights and bias."""

    name: ClassVar[str] = "fuse-conv-bn"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = CONV_BN_RULES
    counter: ClassVar[str] = "fused"


# ----- fuse-gemm-bn ----------------------------------------------------------------------------

_BN_PARAMS = (Const("scale"), Const("shift"), Const("mean"), Const("var"))
_GEMM_BN = Op(
    "BatchNormalization",
    Op("Gemm", Var("x"), Const("w"), Optional(Const("c")), name="gemm"),
    *_BN_PARAMS,
    name="bn",
)
_MATMUL_BN = Op("BatchNormalization", Op("MatMul", Var("x"), Const("w"), name="gemm"), *_BN_PARAMS, name="bn")


def _gemm_bn_check(match: Match, graph: EdgeGraph) -> str | None:
    weights = match.const("w")
    if weights.ndim != 2 or not is_float(weights):
        return "the weight is not a 2-D floating-point matrix"
    node = match["gemm"]
    if node.op == "MatMul" and rank(match["x"]) != 2:
        # BatchNormalization normalises axis 1; only for a 2-D product is that the weight's N axis.
        return f"MatMul input has rank {rank(match['x'])}, folding needs rank 2"
    columns = weights.shape[0] if node.attrs.get("transB", 0) else weights.shape[1]
    return _batchnorm_check(match, graph, columns)


def _fold_gemm_bn(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """y = (alpha * A B + beta * C - mean) * f + shift with f = gamma / sqrt(var + eps) per column
    becomes Gemm with B' = B * f (per column), C' = (beta * C - mean) * f + shift and beta = 1."""
    node = match["gemm"]
    attrs = dict(node.attrs) if node.op == "Gemm" else {}
    trans_b = bool(attrs.get("transB", 0))
    factor = _bn_factor(match)
    dtype = match.const("w").dtype
    weights = match.const("w").astype(np.float64)
    weights = weights * (factor[:, None] if trans_b else factor[None, :])
    c = match.const("c") if node.op == "Gemm" else None
    c = np.zeros(factor.shape) if c is None else float(attrs.get("beta", 1.0)) * c.astype(np.float64)
    attrs["beta"] = 1.0
    new_c = (c - match.const("mean")) * factor + match.const("shift")
    new_w = graph.add_constant(f"{node.name}_w", weights.astype(dtype))
    new_c = graph.add_constant(f"{node.name}_c", new_c.astype(dtype))
    return [
        gs.Node("Gemm", name=node.name, attrs=attrs, inputs=[match["x"], new_w, new_c], outputs=match.outputs)
    ]


GEMM_BN_RULES = RuleSet(
    [
        Rule("gemm-bn", _GEMM_BN, _fold_gemm_bn, _gemm_bn_check),
        Rule("matmul-bn", _MATMUL_BN, _fold_gemm_bn, _gemm_bn_check),
    ]
)


@register
@dataclass(frozen=True)
class FuseGemmBatchNorm(RewritePass):
    """Folds an inference BatchNormalization into the preceding Gemm (or constant-weight MatMul)."""

    name: ClassVar[str] = "fuse-gemm-bn"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = GEMM_BN_RULES
    counter: ClassVar[str] = "fused"
    needs_shapes: ClassVar[frozenset[str]] = frozenset({"MatMul"})


# ----- fuse-matmul-add -------------------------------------------------------------------------
