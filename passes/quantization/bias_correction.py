"""Empirical bias correction (Nagel et al., "Data-Free Quantization", 2019, section 4.2).

Quantizing a layer's weights ``W`` to ``W_q = W + e`` shifts its expected output by
``E[y_q - y] = E[f(x; e)] = f(E[x]; e)`` (the layer is linear in its weight), which a bias absorbs:

    b' = b - f(E[x]; e)        (per output channel, averaged over spatial positions)

``E[x]`` is the mean input of each layer over the calibration samples (per element, so padding and
borders are exact), and ``e`` is the error of the same weight quantization the ``quantize`` pass
applies (``bits``, per channel or per tensor). Run it right before ``quantize`` with matching options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape
from edgec.passes.quantization.calibration import check_calibration, iterate_outputs
from edgec.passes.quantization.numerics import quantize_weight
from edgec.passes.quantization.static import Evaluator
from edgec.passes.quantization.weight_only import weight_axes
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.verify import run_onnx


def _refusal(node: gs.Node) -> str | None:
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return "its weight is not a constant"
    if node.inputs[1].values.dtype != np.float32:
        return "its weight is not float32"
    if node.op == "MatMul":
        return "MatMul has no bias to correct (run fuse-matmul-add first)"
    if node.op == "Gemm" and (node.attrs.get("transA", 0) or node.inputs[1].values.ndim != 2):
        return "Gemm with transA=1 or a non 2-D weight"
    if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
        return "its bias is not a constant"
    if static_shape(node.inputs[0]) is None:
        return "its input has no static shape"
    return None


def _mean_inputs(
    graph: EdgeGraph, nodes: list[gs.Node], samples: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``E[x]`` per element of each node's input over the samples (one pass of the float graph)."""
    names = sorted({node.inputs[0].name for node in nodes})
    tensors = graph.tensors()
    bytes_per_sample = sum(4 * int(np.prod(static_shape(tensors[n]))) for n in names)
    sums: dict[str, np.ndarray] = {}
    count = 0
    for outputs in iterate_outputs(graph.to_onnx(), names, samples, bytes_per_sample):
        for name, values in outputs.items():
            sums[name] = sums.get(name, 0.0) + values.astype(np.float64).sum(axis=0)
        count += len(next(iter(outputs.values())))
    return {name: (total / count).astype(np.float32) for name, total in sums.items()}


def _output_shift(node: gs.Node, mean: np.ndarray, error: np.ndarray, opset: int) -> np.ndarray:
    """``f(E[x]; e)`` averaged to one value per output channel."""
    if node.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        weight = error.T if node.attrs.get("transB", 0) else error
        return alpha * (mean.reshape(-1, weight.shape[0]) @ weight).mean(axis=0)
    # Conv: run the node itself with the error as its weight and no bias (exact padding/strides).
    attrs = {k: v for k, v in node.attrs.items()}
    conv = helper.make_node("Conv", ["x", "e"], ["y"], **attrs)
    model = helper.make_model(
        helper.make_graph(
            [conv],
            "shift",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(mean.shape))],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(error.astype(np.float32), "e")],
        ),
        opset_imports=[helper.make_opsetid("", max(opset, 11))],
    )
    model.ir_version = 8
    shifted = run_onnx(model, {"x": mean}, "a layer's weight error (bias correction)")["y"]
    return shifted.mean(axis=tuple(i for i in range(shifted.ndim) if i != 1))


@register
@dataclass(frozen=True)
class BiasCorrection(Pass):
    """Adjusts Conv/Gemm biases to cancel the mean output shift their weight quantization will cause."""

    name: ClassVar[str] = "bias-correction"
    lossless: ClassVar[bool] = False
    bits: int = 8
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (8, 4, 2, 1):
            raise EdgecError(
                "bias-correction{bits} must be 8, 4, 2 or 1 (the quantize weight width; 1 = binary), "
                f"not {self.bits}"
            )

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        samples = check_calibration(ctx.calibration, graph, ctx.warn)
        ctx.analyses.get("shapes", graph)  # layers whose input shape stays unknown are refused below
        candidates, refused = [], []
        for node in graph.nodes:
            if node.op not in ("Conv", "Gemm", "MatMul"):
                continue
            reason = _refusal(node)
            if reason:
                refused.append({"node": node.name, "reason": reason})
            else:
                candidates.append(node)
        if not candidates:
            return PassResult(graph, changed=False, stats={"corrected": 0, "refused": refused})
        reference = graph.copy()
        means = _mean_inputs(graph, candidates, samples)
        shifts = {}
        for node in candidates:
            weights = node.inputs[1].values
            channel_axis, _ = weight_axes(node, weights.ndim)
            quantized = quantize_weight(weights, self.bits, channel_axis if self.per_channel else None)
            error = quantized.dequantize() - weights.astype(np.float32)
            shift = _output_shift(node, means[node.inputs[0].name], error, graph.opset)
            channels = weights.shape[channel_axis]
            bias = np.zeros(channels, np.float32)
            if len(node.inputs) > 2 and node.inputs[2].name:
                old = node.inputs[2].values.astype(np.float32)
                if node.op == "Gemm":
                    # Fold beta so the corrected C is in output units.
                    old = old * float(node.attrs.get("beta", 1.0))
                    node.attrs["beta"] = 1.0
                bias = np.broadcast_to(old.reshape(-1), (channels,)).astype(np.float32)
            corrected = graph.add_constant(f"{node.name}_b", (bias - shift).astype(np.float32))
            if len(node.inputs) > 2:
                node.inputs[2] = corrected
            else:
                node.inputs.append(corrected)
            shifts[node.name] = float(np.abs(shift).max())
        graph.cleanup()
        drift = Evaluator(reference, samples).measure(graph)["error"]
        stats: dict[str, Any] = {
            "corrected": len(candidates),
            "bits": self.bits,
            "per_channel": self.per_channel,
            "max_shift": {name: round(value, 6) for name, value in shifts.items()},
            "refused": refused,
            # The float model itself changes: this is its drift from the input graph.
            "error": drift,
        }
        return PassResult(graph, changed=True, stats=stats)
