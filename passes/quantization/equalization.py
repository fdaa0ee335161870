"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019).

For two layers ``y = W2 · relu(W1 x + b1)`` and any positive per-channel ``s``,
``relu(W1 x + b1) = s · relu((W1 x + b1) / s)`` (Relu is positively homogeneous), so

    W1' = W1 / s (rows),  b1' = b1 / s,  W2' = W2 · s (input columns)

computes the same function. With ``r1_c = max|W1[c, :]|`` and ``r2_c = max|W2[:, c]|``, the choice
``s_c = sqrt(r1_c / r2_c)`` gives both channels the range ``sqrt(r1_c r2_c)``: weight channels (and
the activations between the layers) become evenly scaled, which per-tensor scales quantize well.
Chains are equalized pair by pair, repeatedly, until the scales stop changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult, register

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# Activations f with f(s x) = s f(x) for s > 0, so a per-channel scale passes through them.
HOMOGENEOUS = ("Relu", "MaxPool", "Identity")


@dataclass
class _Pair:
    first: gs.Node
    second: gs.Node


def _weight(node: gs.Node) -> np.ndarray | None:
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    values = node.inputs[1].values
    return values if values.dtype == np.float32 else None


def _output_axis(node: gs.Node, weights: np.ndarray) -> int:
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return weights.ndim - 1


def _input_axis(node: gs.Node, weights: np.ndarray) -> int | None:
    """The axis of ``node``'s weight that multiplies input channel ``c`` (``None``: unsupported)."""
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        if group == 1:
            return 1
        if weights.shape[1] == 1 and group == weights.shape[0]:
            return 0  # depthwise: input channel c only meets filter c
        return None
    if node.op == "Gemm":
        return 1 if node.attrs.get("transB", 0) else 0
    return weights.ndim - 2 if weights.ndim == 2 else None


def find_pairs(graph: EdgeGraph) -> tuple[list[_Pair], list[dict[str, str]]]:
    """Layer pairs joined by positively homogeneous ops, and the refused candidates with reasons."""
    pairs, refused = [], []
    for node in graph.nodes:
        if node.op not in LAYER_OPS or _weight(node) is None:
            continue
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            continue
        tensor = node.outputs[0]
        reason = None
        while True:
            consumers = list(tensor.outputs)
            if graph.is_graph_output(tensor) or len(consumers) != 1:
                reason = f"'{tensor.name}' has {len(consumers)} consumers or is a graph output"
                break
            consumer = consumers[0]
            if consumer.op in HOMOGENEOUS and len([t for t in consumer.outputs if t.outputs]) <= 1:
                tensor = consumer.outputs[0]
                continue
            if consumer.op not in LAYER_OPS:
                reason = f"{consumer.op} '{consumer.name}' is not positively homogeneous (s·f(x) != f(s·x))"
                break
            if consumer.inputs[0] is not tensor or _weight(consumer) is None:
                reason = f"{consumer.op} '{consumer.name}' has no constant float weight on that input"
                break
            if _input_axis(consumer, _weight(consumer)) is None:
                reason = f"{consumer.op} '{consumer.name}' is a grouped convolution"
                break
            pairs.append(_Pair(node, consumer))
            break
        if reason:
            refused.append({"node": node.name, "reason": reason})
    return pairs, refused


def _channel_max(weights: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(weights, axis, 0)).reshape(weights.shape[axis], -1).max(axis=1)


def _scale_along(values: np.ndarray, axis: int, factor: np.ndarray) -> np.ndarray:
    shape = [1] * values.ndim
    shape[axis] = -1
    return (values.astype(np.float64) * factor.reshape(shape)).astype(np.float32)


def equalize_pair(graph: EdgeGraph, pair: _Pair) -> float:
    """Rescales one pair in place; returns ``max |log s|`` (0 once equalized)."""
    w1, w2 = _weight(pair.first), _weight(pair.second)
    out_axis, in_axis = _output_axis(pair.first, w1), _input_axis(pair.second, w2)
    if w1.shape[out_axis] != w2.shape[in_axis]:
        return 0.0
    r1, r2 = _channel_max(w1, out_axis).astype(np.float64), _channel_max(w2, in_axis).astype(np.float64)
    # Dead channels (all-zero weights on either side) keep s = 1.
    s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
    pair.first.inputs[1] = graph.add_constant(f"{pair.first.name}_w", _scale_along(w1, out_axis, 1.0 / s))
    pair.second.inputs[1] = graph.add_constant(f"{pair.second.name}_w", _scale_along(w2, in_axis, s))
    if len(pair.first.inputs) > 2 and isinstance(pair.first.inputs[2], gs.Constant):
        bias = pair.first.inputs[2].values
        if bias.size == len(s):
            pair.first.inputs[2] = graph.add_constant(
                f"{pair.first.name}_b", (bias.reshape(-1) / s).astype(np.float32).reshape(bias.shape)
            )
        elif bias.size != 1 or float(bias.reshape(-1)[0]) != 0.0:
            raise EdgecError(
                f"{pair.first.op} '{pair.first.name}': cannot rescale a bias of shape {bias.shape}"
            )
    return float(np.max(np.abs(np.log(s)), initial=0.0))


def _spread(graph: EdgeGraph, pairs: list[_Pair]) -> float:
    """Mean over pairs of max/min output-channel range of the first layer (1 = perfectly even)."""
    spreads = []
    for pair in pairs:
        w = _weight(pair.first)
        ranges = _channel_max(w, _output_axis(pair.first, w))
        ranges = ranges[ranges > 0]
        if len(ranges):
            spreads.append(float(ranges.max() / ranges.min()))
    return float(np.mean(spreads)) if spreads else 1.0


@register
@dataclass(frozen=True)
class CrossLayerEqualization(Pass):
    """Rescales the channels of consecutive Conv/Gemm layers joined by Relu so their weight ranges match."""

    name: ClassVar[str] = "cross-layer-equalization"
    lossless: ClassVar[bool] = True
    iterations: int = 20
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise EdgecError("cross-layer-equalization{iterations} must be at least 1")

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        if any(node.op == "BatchNormalization" for node in graph.nodes):
            ctx.warn(
                "cross-layer-equalization: run fuse-conv-bn first; Conv→BatchNormalization pairs are skipped"
            )
        pairs, refused = find_pairs(graph)
        if not pairs:
            return PassResult(graph, changed=False, stats={"pairs": 0, "refused": refused})
        before = _spread(graph, pairs)
        rounds = 0
        for rounds in range(1, self.iterations + 1):  # noqa: B007 - reported below
            change = max(equalize_pair(graph, pair) for pair in pairs)
            if change < self.tolerance:
                break
        graph.cleanup()
        stats: dict[str, Any] = {
            "pairs": len(pairs),
            "rounds": rounds,
            "channel_range_spread_before": round(before, 4),
            "channel_range_spread_after": round(_spread(graph, pairs), 4),
            "refused": refused,
        }
        return PassResult(graph, changed=True, stats=stats)
