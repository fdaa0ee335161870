"""``substitute-depthwise-separable``: a KxK Conv becomes a depthwise KxK Conv and a 1x1 Conv.

For each input channel ``c`` the slice ``W[:, c]`` (``[O, kh*kw]``) is replaced by its best
rank-1 approximation ``P[:, c] D[c]`` (truncated SVD, least squares in the weights):

    W[o, c, i, j] ~= P[o, c] * D[c, i, j]        depthwise D: [C, 1, kh, kw], pointwise P: [O, C, 1, 1]

MACs per output pixel fall from ``O C kh kw`` to ``C kh kw + O C`` (MobileNet's block, without
the intermediate BatchNorm/ReLU so that the pair stays linear and the fit is exact where it can be).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.substitution.common import SubstitutionPass
from edgec.pm import register
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var

_CONV = Op("Conv", Var("x"), Const("w"), Optional(Const("b")), name="conv")


def separable_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The depthwise ``[C, 1, kh, kw]`` and pointwise ``[O, C, 1, 1]`` weights closest to ``weights``."""
    out_channels, in_channels, kh, kw = weights.shape
    depthwise = np.zeros((in_channels, 1, kh, kw))
    pointwise = np.zeros((out_channels, in_channels, 1, 1))
    for channel in range(in_channels):
        u, s, vt = np.linalg.svd(weights[:, channel].reshape(out_channels, -1).astype(np.float64))
        pointwise[:, channel, 0, 0] = u[:, 0] * s[0]
        depthwise[channel, 0] = vt[0].reshape(kh, kw)
    return depthwise.astype(weights.dtype), pointwise.astype(weights.dtype)


def reduction(weights: np.ndarray) -> float:
    """MACs of the Conv over MACs of its depthwise-separable form (per output pixel)."""
    out_channels, _, kh, kw = weights.shape
    return out_channels * kh * kw / (kh * kw + out_channels)


def _rules(min_reduction: float, exclude: frozenset[str]) -> RuleSet:
    def check(match: Match, graph: EdgeGraph) -> str | None:
        conv, weights = match["conv"], match.const("w")
        if conv.name in exclude:
            return "excluded by the user"
        if weights.ndim != 4 or weights.dtype.kind != "f":
            return "not a 2-D convolution with floating-point weights"
        if conv.attrs.get("group", 1) != 1:
            return "already grouped (depthwise or grouped convolution)"
        if weights.shape[2] * weights.shape[3] == 1:
            return "a 1x1 convolution is already pointwise"
        if weights.shape[1] == 1:
            return "one input channel: the depthwise stage would be a single filter shared by every output"
        if reduction(weights) < min_reduction:
            return f"MAC reduction {reduction(weights):.2f}x is below min_reduction={min_reduction}"
        return None

    def replace(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        conv = match["conv"]
        depthwise, pointwise = separable_weights(match.const("w"))
        middle = gs.Variable(graph.fresh_name(f"{conv.name}_depthwise"), dtype=np.float32)
        attrs = {k: v for k, v in conv.attrs.items() if k not in ("group", "kernel_shape")}
        inputs = [match["x"], graph.add_constant(f"{conv.name}_dw_w", depthwise)]
        pointwise_inputs = [middle, graph.add_constant(f"{conv.name}_pw_w", pointwise)]
        if match["b"] is not None:
            pointwise_inputs.append(match["b"])
        return [
            gs.Node(
                "Conv",
                graph.fresh_name(f"{conv.name}_dw"),
                {**attrs, "group": depthwise.shape[0]},
                inputs,
                [middle],
            ),
            gs.Node("Conv", conv.name, {}, pointwise_inputs, match.outputs),
        ]

    return RuleSet([Rule("depthwise-separable", _CONV, replace, check)], max_rounds=1)


@register
@dataclass(frozen=True)
class SubstituteDepthwiseSeparable(SubstitutionPass):
    """Replaces each KxK Conv by a depthwise KxK Conv and a pointwise 1x1 Conv fitted by per-channel SVD."""

    name: ClassVar[str] = "substitute-depthwise-separable"
    min_reduction: float = 2.0
    exclude: tuple[str, ...] = ()

    def rule_set(self) -> RuleSet:
        return _rules(self.min_reduction, frozenset(self.exclude))
