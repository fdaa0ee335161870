"""Fold a Pad before a Conv, and per-channel Mul/Add after it, into the Conv itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.common import RewritePass
from edgec.passes.fusion.common import is_float
from edgec.pm import register
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var


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
    if not is_float(weights):
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
