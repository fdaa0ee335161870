"""Quantization-aware training of a QDQ graph that edgec's ``quantize`` pass wrote.

The trained model keeps the QDQ graph's structure exactly (which tensors are quantized, which
activations are folded, the precision record the target's build is checked against); only
values change. For training:

- each integer weight ``DequantizeLinear(q, s_w, axis)`` becomes a float weight (the float model's
  weight, before rounding) behind ``QuantizeLinear -> DequantizeLinear`` with the same scale, which
  :mod:`.fake_quant` turns into a fake-quantization kernel on the weight's grid (int8/int4/int2
  ``[-q_max, q_max]``, binary ``±1``);
- each int32 bias ``DequantizeLinear(b_q, s_x * s_w)`` becomes its float value;
- activation ``QuantizeLinear -> DequantizeLinear`` pairs stay (int8, their zero points fixed);
- every scale is a trained parameter (learned step size).

Export writes the trained values back: ``q = clamp(round(W / s_w), -q_max, q_max)`` (``sign(W)``
for binary), the learned scales, and ``b_q = round(b / (s_x * s_w))`` with the learned scales, so
the integer lowering builds exactly what training measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.passes.quantization.numerics import integer_constant
from edgec.train.export import Exporter
from edgec.train.fake_quant import FakeQuantSpec

# Smallest scale written back: a scale driven to 0 would divide by zero in the lowering.
_MIN_SCALE = 1e-12


@dataclass(frozen=True)
class WeightSite:
    """A quantized weight: its DequantizeLinear, scale constant, bit width and channel axis."""

    dequantize: str
    scale: str
    bits: int
    axis: int | None


@dataclass(frozen=True)
class BiasSite:
    """An int32 bias: its DequantizeLinear, and the activation and weight scales of its layer."""

    dequantize: str
    scale: str
    input_scale: str
    weight_scale: str


@dataclass
class TrainableQdq:
    """The training form of a QDQ graph and where each trained value goes back."""

    graph: EdgeGraph
    specs: dict[str, FakeQuantSpec] = field(default_factory=dict)
    weights: dict[str, WeightSite] = field(default_factory=dict)
    biases: dict[str, BiasSite] = field(default_factory=dict)


def _dequantized(node: gs.Node) -> np.ndarray:
    values = np.asarray(node.inputs[0].values).astype(np.float32)
    scale = np.asarray(node.inputs[1].values, np.float32)
    axis = node.attrs.get("axis", 1)
    if scale.ndim == 0:
        return values * scale
    shape = [1] * values.ndim
    shape[axis % values.ndim] = -1
    return values * scale.reshape(shape)


def _consumer(tensor: gs.Tensor) -> gs.Node | None:
    consumers = list(tensor.outputs)
    return consumers[0] if len(consumers) == 1 else None


def trainable_qdq(quantized: EdgeGraph, float_weights: dict[str, np.ndarray], bits: int) -> TrainableQdq:
    """The training form of ``quantized`` (left untouched).

    Args:
        quantized: a graph from the ``quantize`` pass (static int8 or weight-only).
        float_weights: the float weight of each quantized layer, by layer (node) name; layers not
            listed start from their dequantized weight.
        bits: the weight width (8, 4, 2, or 1 for binary).

    Raises:
        EdgecError: group-wise (blocked) weight scales, which training does not support.
    """
    graph = quantized.copy()
    result = TrainableQdq(graph)
    spec = FakeQuantSpec.for_bits(bits)
    for node in list(graph.nodes):
        if node.op != "DequantizeLinear" or not isinstance(node.inputs[0], gs.Constant):
            continue
        if node.attrs.get("block_size", 0):
            raise EdgecError(
                f"DequantizeLinear '{node.name}' has group-wise scales; quantization-aware training "
                "supports per-channel and per-tensor scales (drop group_size)"
            )
        layer = _consumer(node.outputs[0])
        values = _dequantized(node)
        if node.inputs[0].values.dtype == np.int32:
            result.biases[_replace_with_float(graph, node, values, "bias")] = _bias_site(node, layer)
            continue
        start = float_weights.get(layer.name if layer is not None else "", values)
        weight = graph.add_constant(f"{node.name}_float", np.asarray(start, np.float32).reshape(values.shape))
        zero = graph.add_constant(f"{node.name}_zero_point", np.zeros((), np.int8))
        integer = gs.Variable(graph.fresh_name(f"{node.name}_q"), dtype=np.int8, shape=list(values.shape))
        scale = node.inputs[1]
        attrs = {"axis": node.attrs["axis"]} if "axis" in node.attrs else {}
        graph.gs.nodes.append(
            gs.Node(
                "QuantizeLinear",
                graph.fresh_name(f"{node.name}_fake_quantize"),
                attrs=attrs,
                inputs=[weight, scale, zero],
                outputs=[integer],
            )
        )
        node.inputs.clear()
        node.inputs.extend([integer, scale, zero])
        result.specs[scale.name] = spec
        axis = node.attrs.get("axis", 1) if np.asarray(scale.values).ndim else None
        result.weights[weight.name] = WeightSite(node.name, scale.name, bits, axis)
    graph.cleanup()
    return result


def _replace_with_float(graph: EdgeGraph, node: gs.Node, values: np.ndarray, prefix: str) -> str:
    constant = graph.add_constant(f"{node.name}_{prefix}", values)
    output = node.outputs[0]
    for consumer in list(output.outputs):
        for index, tensor in enumerate(consumer.inputs):
            if tensor is output:
                consumer.inputs[index] = constant
    node.outputs.clear()
    return constant.name


def _bias_site(node: gs.Node, layer: gs.Node | None) -> BiasSite:
    if layer is None:
        raise EdgecError(f"bias DequantizeLinear '{node.name}' feeds no single layer")
    activation = layer.inputs[0].inputs[0] if layer.inputs[0].inputs else None
    weight = layer.inputs[1].inputs[0] if layer.inputs[1].inputs else None
    if activation is None or weight is None or "DequantizeLinear" not in (activation.op, weight.op):
        raise EdgecError(f"layer '{layer.name}' has an int32 bias but no quantized input and weight")
    return BiasSite(node.name, node.inputs[1].name, activation.inputs[1].name, weight.inputs[1].name)


def _weight_integers(weight: np.ndarray, scale: np.ndarray, site: WeightSite) -> np.ndarray:
    if site.axis is not None:
        shape = [1] * weight.ndim
        shape[site.axis % weight.ndim] = -1
        scale = scale.reshape(shape)
    if site.bits == 1:
        return np.where(weight >= 0, 1, -1).astype(np.int8)
    limit = 2 ** (site.bits - 1) - 1
    return np.clip(np.round(weight / scale), -limit, limit).astype(np.int8)


def qdq_exporter(quantized: EdgeGraph, trainable: TrainableQdq, sources: dict[str, str]) -> Exporter:
    """Trained parameters (by training name) → a copy of ``quantized`` with the learned integer
    weights, scales and biases (see the module docstring)."""

    def export(values: dict[str, np.ndarray]) -> EdgeGraph:
        by_source = {sources[name]: value for name, value in values.items()}
        result = quantized.copy()
        nodes = {node.name: node for node in result.nodes}
        constants = {c.name: c for c in result.constants()}
        scale_names = {
            n.inputs[1].name for n in result.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")
        }
        scales: dict[str, np.ndarray] = {}
        for name, constant in constants.items():
            if name not in by_source or constant.values.dtype != np.float32:
                continue
            learned = np.asarray(by_source[name], np.float32).reshape(constant.values.shape)
            if name in scale_names:
                learned = scales[name] = np.maximum(learned, _MIN_SCALE)
            constant.values = learned
        for weight_name, site in trainable.weights.items():
            node = nodes[site.dequantize]
            integers = _weight_integers(by_source[weight_name], scales[site.scale], site)
            node.inputs[0] = integer_constant(result, f"{site.dequantize}_q", integers, site.bits)
        for bias_name, site in trainable.biases.items():
            node = nodes[site.dequantize]
            bias_scale = (
                np.float32(scales[site.input_scale].reshape(())) * scales[site.weight_scale]
            ).astype(np.float32)
            bias_scale = np.broadcast_to(bias_scale, node.inputs[0].values.shape).astype(np.float32)
            integers = np.round(np.asarray(by_source[bias_name], np.float64) / bias_scale)
            node.inputs[0] = result.add_constant(
                f"{site.dequantize}_q", np.clip(integers, -(2**31), 2**31 - 1).astype(np.int32)
            )
            node.inputs[1] = result.add_constant(f"{site.dequantize}_scale", bias_scale)
        result.cleanup()
        return result

    return export
