"""Operator fusion: fold normalisation, scales, shifts and padding into Conv and Gemm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.common import RewritePass
from edgec.pm import register, register_pipeline
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var


def _rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def _is_float(values: np.ndarray) -> bool:
    return np.asarray(values).dtype.kind == "f"


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
    if not _is_float(match.const("w")):
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
    if weights.ndim != 2 or not _is_float(weights):
        return "the weight is not a 2-D floating-point matrix"
    node = match["gemm"]
    if node.op == "MatMul" and _rank(match["x"]) != 2:
        # BatchNormalization normalises axis 1; only for a 2-D product is that the weight's N axis.
        return f"MatMul input has rank {_rank(match['x'])}, folding needs rank 2"
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


def _matmul_add_check(match: Match, graph: EdgeGraph) -> str | None:
    weights, bias = match.const("w"), match.const("bias")
    if weights.ndim != 2 or not _is_float(weights):
        return "the weight is not a 2-D floating-point matrix"
    if _rank(match["x"]) != 2:
        return f"MatMul input has rank {_rank(match['x'])}, Gemm needs rank 2"
    if bias.dtype != weights.dtype:
        return f"bias dtype {bias.dtype} differs from weight dtype {weights.dtype}"
    if bias.shape not in ((), (1,), (weights.shape[1],), (1, 1), (1, weights.shape[1])):
        return f"bias shape {list(bias.shape)} does not broadcast over the last dimension only"
    return None


def _fuse_matmul_add(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """MatMul(x, W) + c = Gemm(x, W, c) with alpha = beta = 1 (c broadcast over the rows)."""
    return [
        gs.Node(
            "Gemm",
            name=match["matmul"].name,
            inputs=[match["x"], match["w"], match["bias"]],
            outputs=match.outputs,
        )
    ]


MATMUL_ADD_RULES = RuleSet(
    [
        Rule(
            "matmul-add",
            Op("Add", Op("MatMul", Var("x"), Const("w"), name="matmul"), Const("bias"), commutative=True),
            _fuse_matmul_add,
            _matmul_add_check,
        )
    ]
)


@register
@dataclass(frozen=True)
class FuseMatMulAdd(RewritePass):
    """Fuses a 2-D MatMul by constant weights and an Add of a constant bias into one Gemm."""

    name: ClassVar[str] = "fuse-matmul-add"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = MATMUL_ADD_RULES
    counter: ClassVar[str] = "fused"
    needs_shapes: ClassVar[frozenset[str]] = frozenset({"MatMul"})


# ----- fuse-pad-conv ---------------------------------------------------------------------------


def _pad_amounts(match: Match, rank: int) -> tuple[list[int] | None, str]:
    """The Pad's begin+end amounts over all ``rank`` axes, or the reason they are unusable."""
    pad = match["pad"]
    if "pads" in pad.attrs:  # opset < 11
        pads = list(pad.attrs["pads"])
    elif isinstance(match["pads"], gs.Constant):
        pads = [int(v) for v in match.const("pads").reshape(-1)]
    else:
        return None, "the pads are computed at run time"
    axes = match["axes"]
    if axes is not None:
        if not isinstance(axes, gs.Constant):
            return None, "the pad axes are computed at run time"
        full = [0] * (2 * rank)
        chosen = [int(a) % rank for a in match.const("axes").reshape(-1)]
        for index, axis in enumerate(chosen):
            full[axis], full[rank + axis] = pads[index], pads[len(chosen) + index]
        pads = full
    if len(pads) != 2 * rank:
        return None, f"{len(pads)} pad amounts for a rank-{rank} input"
    return pads, ""


def _pad_conv_check(match: Match, graph: EdgeGraph) -> str | None:
    pad, conv = match["pad"], match["conv"]
    if pad.attrs.get("mode", "constant") != "constant":
        return f"Pad mode is '{pad.attrs['mode']}', only constant zero padding is a Conv pad"
    value = match["value"]
    if "value" in pad.attrs:
        value_is_zero = float(pad.attrs["value"]) == 0.0
    elif value is None:
        value_is_zero = True
    else:
        value_is_zero = isinstance(value, gs.Constant) and not np.any(match.const("value"))
    if not value_is_zero:
        return "Pad value is not a constant zero"
    if conv.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return f"Conv uses auto_pad={conv.attrs['auto_pad']}"
    rank = match.const("w").ndim
    pads, reason = _pad_amounts(match, rank)
    if pads is None:
        return reason
    if any(p < 0 for p in pads):
        return "Pad crops (negative pads)"
    if any(pads[i] or pads[rank + i] for i in (0, 1)):
        return "Pad pads the batch or channel axis"
    return None


def _fuse_pad_conv(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """conv(pad0(x, p), pads=q) = conv(x, pads=q + p) on the spatial axes (zero padding only)."""
    conv = match["conv"]
    rank = match.const("w").ndim
    pads, _ = _pad_amounts(match, rank)
    spatial = rank - 2
    current = list(conv.attrs.get("pads", [0] * (2 * spatial)))
    begins = [current[i] + pads[2 + i] for i in range(spatial)]
    ends = [current[spatial + i] + pads[rank + 2 + i] for i in range(spatial)]
    attrs = {**conv.attrs, "pads": begins + ends}
    inputs = [match["x"], match["w"]] + ([match["b"]] if match["b"] is not None else [])
    return [gs.Node("Conv", name=conv.name, attrs=attrs, inputs=inputs, outputs=match.outputs)]


PAD_CONV_RULES = RuleSet(
    [
        Rule(
            "pad-conv",
            Op(
                "Conv",
                Op(
                    "Pad",
                    Var("x"),
                    Optional(Var("pads")),
                    Optional(Var("value")),
                    Optional(Var("axes")),
                    name="pad",
                ),
                Const("w"),
                Optional(Var("b")),
                name="conv",
            ),
            _fuse_pad_conv,
            _pad_conv_check,
        )
    ]
)


@register
@dataclass(frozen=True)
class FusePadConv(RewritePass):
    """Folds a constant zero Pad on the spatial axes into the following Conv's pads."""

    name: ClassVar[str] = "fuse-pad-conv"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = PAD_CONV_RULES
    counter: ClassVar[str] = "fused"


# ----- fuse-conv-mul-add -----------------------------------------------------------------------

_CONV = Op("Conv", Var("x"), Const("w"), Optional(Const("b")), name="conv")


def _per_channel(match: Match, graph: EdgeGraph) -> str | None:
    """Accepts a constant that broadcasts per output channel: scalar, [C,1,1], [1,C,1,1], [1]..."""
    weights, operand = match.const("w"), match.const("k")
    channels, rank = weights.shape[0], weights.ndim
    if not _is_float(weights):
        return "Conv weights are not floating point"
    if operand.dtype != weights.dtype:
        return f"operand dtype {operand.dtype} differs from the Conv weight dtype {weights.dtype}"
    if operand.ndim > rank:
        return f"operand of rank {operand.ndim} would broadcast the Conv output to a higher rank"
    shape = (1,) * (rank - operand.ndim) + operand.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return f"operand shape {list(operand.shape)} is not per output channel (C={channels})"
    return None


def _channel_values(match: Match) -> np.ndarray:
    """The operand as one value per output channel (float64)."""
    channels = match.const("w").shape[0]
    operand = match.const("k").astype(np.float64).reshape(-1)
    return np.broadcast_to(operand, (channels,)) if operand.size == 1 else operand


def _conv_with(match: Match, graph: EdgeGraph, weights: np.ndarray, bias: np.ndarray) -> list[gs.Node]:
    conv = match["conv"]
    dtype = match.const("w").dtype
    new_w = graph.add_constant(f"{conv.name}_w", weights.astype(dtype))
    new_b = graph.add_constant(f"{conv.name}_b", bias.astype(dtype))
    return [
        gs.Node(
            "Conv",
            name=conv.name,
            attrs=dict(conv.attrs),
            inputs=[match["x"], new_w, new_b],
            outputs=match.outputs,
        )
    ]


def _conv_bias(match: Match) -> np.ndarray:
    bias = match.const("b")
    return np.zeros(match.const("w").shape[0]) if bias is None else bias.astype(np.float64)


def _fold_mul(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """conv(x, w, b) * s = conv(x, w * s[c], b * s[c]) with s one value per output channel c."""
    scale = _channel_values(match)
    weights = match.const("w").astype(np.float64)
    weights = weights * scale.reshape(-1, *[1] * (weights.ndim - 1))
    return _conv_with(match, graph, weights, _conv_bias(match) * scale)


def _fold_add(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """conv(x, w, b) + t = conv(x, w, b + t[c]) with t one value per output channel c."""
    return _conv_with(
        match, graph, match.const("w").astype(np.float64), _conv_bias(match) + _channel_values(match)
    )


CONV_MUL_ADD_RULES = RuleSet(
    [
        Rule("conv-mul", Op("Mul", _CONV, Const("k"), commutative=True), _fold_mul, _per_channel),
        Rule("conv-add", Op("Add", _CONV, Const("k"), commutative=True), _fold_add, _per_channel),
    ]
)


@register
@dataclass(frozen=True)
class FuseConvMulAdd(RewritePass):
    """Folds a per-output-channel constant Mul and/or Add after a Conv into its weights and bias."""

    name: ClassVar[str] = "fuse-conv-mul-add"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = CONV_MUL_ADD_RULES
    counter: ClassVar[str] = "fused"


# The order matters: cleanup exposes constants and removes no-ops that hide patterns, Pad folds
# before BN (both rewrite the same Conv), and dead-code removal drops the replaced weights.
register_pipeline(
    "default",
    "eliminate-dead-code,fold-constants,eliminate-identity,merge-transposes,merge-reshapes,"
    "fuse-pad-conv,fuse-conv-bn,fuse-conv-mul-add,fuse-gemm-bn,fuse-matmul-add,eliminate-dead-code",
    fixed_point=True,
    description="cleanup and fusion to a fixed point",
)
