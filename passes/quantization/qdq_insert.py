"""Writing a static int8 plan into a graph: QuantizeLinear/DequantizeLinear pairs on the planned
tensors, weights and biases as DequantizeLinear of integer constants, activations folded.

The plan (:mod:`.qdq`) says what to quantize; this module writes it in the standard QDQ form: every
quantized activation ``t`` becomes ``DequantizeLinear(QuantizeLinear(t, s, z), s, z)``; a
Conv/Gemm/MatMul reads its weight through ``DequantizeLinear(int8 W, s_w, 0, axis)`` and its bias
through ``DequantizeLinear(int32 b, s_x * s_w, 0)`` with ``b_q = round(b / (s_x * s_w))``.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.quantization.numerics import (
    ActivationParams,
    activation_params,
    integer_constant,
    quantize_weight,
)
from edgec.passes.quantization.qdq import WEIGHT_OPS, Plan, group_params


def _unfold_impossible(plan: Plan, params: dict[str, ActivationParams], ranges: dict) -> None:
    """Keeps an activation node whose clamp the zero point cannot reproduce (its group's range was
    widened by a Concat partner); the producer's own output is then quantized separately."""
    for name, (producer, low, high) in list(plan.folds.items()):
        activation = plan.fold_outputs[producer.outputs[0].name]
        lowest, highest = params[activation.outputs[0].name].representable
        step = params[activation.outputs[0].name].scale
        if lowest >= low - 1e-6 * step and highest <= high + 1e-6 * step:
            continue
        del plan.folds[name]
        plan.refused[name] = (
            "not folded: its output shares a scale (Concat) whose range the clamp does not bound; it runs "
            "between its producer's and its own QDQ (a target with integer kernels requantizes and clamps)"
        )
        del plan.fold_outputs[producer.outputs[0].name]
        output = producer.outputs[0]
        plan.add(output)
        params[output.name] = activation_params(*ranges[output.name], symmetric=False)


def _scalar(graph: EdgeGraph, prefix: str, value: float | int, dtype: type) -> gs.Constant:
    return graph.add_constant(prefix, np.asarray(value, dtype=dtype))


def insert_qdq(graph: EdgeGraph, tensor: gs.Variable, scale: gs.Constant, zero_point: gs.Constant) -> None:
    """Routes every consumer of ``tensor`` through QuantizeLinear → DequantizeLinear.

    A graph output keeps its name on the DequantizeLinear output; its producer writes a new
    ``<name>_float`` tensor instead.
    """
    quantized = gs.Variable(graph.fresh_name(f"{tensor.name}_q"), dtype=np.int8, shape=tensor.shape)
    if graph.is_graph_output(tensor):
        source = gs.Variable(graph.fresh_name(f"{tensor.name}_float"), dtype=tensor.dtype, shape=tensor.shape)
        producer = graph.producer(tensor)
        producer.outputs[producer.outputs.index(tensor)] = source
        restored = tensor
        consumers = list(tensor.outputs)
    else:
        source = tensor
        restored = gs.Variable(graph.fresh_name(f"{tensor.name}_dq"), dtype=tensor.dtype, shape=tensor.shape)
        consumers = list(tensor.outputs)
    for consumer in consumers:
        for index, value in enumerate(consumer.inputs):
            if value is tensor:
                consumer.inputs[index] = restored
    graph.gs.nodes.append(
        gs.Node(
            "QuantizeLinear",
            name=graph.fresh_name(f"{tensor.name}_quantize"),
            inputs=[source, scale, zero_point],
            outputs=[quantized],
        )
    )
    graph.gs.nodes.append(
        gs.Node(
            "DequantizeLinear",
            name=graph.fresh_name(f"{tensor.name}_dequantize"),
            inputs=[quantized, scale, zero_point],
            outputs=[restored],
        )
    )


def dequantized_weight(
    graph: EdgeGraph,
    node_name: str,
    weights: np.ndarray,
    bits: int,
    axis: int | None,
    block_size: int = 0,
) -> tuple[gs.Variable, np.ndarray]:
    """``DequantizeLinear(q, s, axis)`` for a weight; returns the float output and the scales."""
    quantized = quantize_weight(weights, bits=bits, axis=axis, block_size=block_size)
    q_constant = integer_constant(graph, f"{node_name}_w_q", quantized.values, bits)
    scale = graph.add_constant(f"{node_name}_w_scale", quantized.scale.astype(np.float32))
    output = gs.Variable(graph.fresh_name(f"{node_name}_w_dq"), dtype=np.float32, shape=list(weights.shape))
    attrs: dict[str, int] = {}
    if axis is not None and quantized.scale.ndim > 0:
        attrs["axis"] = int(axis)
        if block_size:
            attrs["block_size"] = int(block_size)
    graph.gs.nodes.append(
        gs.Node(
            "DequantizeLinear",
            name=graph.fresh_name(f"{node_name}_w_dequantize"),
            attrs=attrs,
            inputs=[q_constant, scale],
            outputs=[output],
        )
    )
    return output, quantized.scale


def _dequantized_bias(graph: EdgeGraph, node_name: str, bias: np.ndarray, scale: np.ndarray) -> gs.Variable:
    """``b_q = round(b / (s_x * s_w))`` in int32, restored by DequantizeLinear with that scale."""
    scale = np.broadcast_to(scale.astype(np.float32), bias.shape).astype(np.float32)
    q = np.clip(np.round(bias.astype(np.float64) / scale), -(2**31), 2**31 - 1).astype(np.int32)
    q_constant = graph.add_constant(f"{node_name}_b_q", q)
    scale_constant = graph.add_constant(f"{node_name}_b_scale", scale)
    output = gs.Variable(graph.fresh_name(f"{node_name}_b_dq"), dtype=np.float32, shape=list(bias.shape))
    graph.gs.nodes.append(
        gs.Node(
            "DequantizeLinear",
            name=graph.fresh_name(f"{node_name}_b_dequantize"),
            attrs={"axis": 0},
            # The zero point is omitted: it defaults to 0 and would cost 4 bytes per channel.
            inputs=[q_constant, scale_constant],
            outputs=[output],
        )
    )
    return output


def _quantize_weights(
    graph: EdgeGraph, node: gs.Node, params: dict[str, ActivationParams], per_channel: bool
) -> None:
    """Replaces float weights and bias of a quantized Conv/Gemm/MatMul (and constant operands of
    Add/Mul) by their dequantized integer forms."""
    if node.op in ("Add", "Mul"):
        for index, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant):
                node.inputs[index], _ = dequantized_weight(graph, node.name, tensor.values, 8, None)
        return
    if node.op not in WEIGHT_OPS or not isinstance(node.inputs[1], gs.Constant):
        return
    weights = node.inputs[1].values.astype(np.float32)
    if node.op == "Gemm":
        # alpha (A B) + beta C == A (alpha B) + (beta C): folding both keeps the Gemm plain.
        weights = weights * float(node.attrs.get("alpha", 1.0))
        axis: int | None = 0 if node.attrs.get("transB", 0) else 1
        node.attrs["alpha"] = 1.0
    elif node.op == "MatMul":
        axis = weights.ndim - 1
    else:
        axis = 0
    channel_axis = axis
    if not per_channel:
        axis = None
    node.inputs[1], weight_scale = dequantized_weight(graph, node.name, weights, 8, axis)
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        bias = node.inputs[2].values.astype(np.float32)
        if node.op == "Gemm":
            bias = bias * float(node.attrs.get("beta", 1.0))
            node.attrs["beta"] = 1.0
        channels = weights.shape[channel_axis]
        if (bias.size in (1, channels) and bias.ndim <= 1) or (bias.ndim == 2 and bias.shape[0] == 1):
            bias = np.broadcast_to(bias.reshape(-1), (channels,)).astype(np.float32)
            input_scale = params[node.inputs[0].name].scale
            node.inputs[2] = _dequantized_bias(graph, node.name, bias, input_scale * weight_scale)
        else:
            # A full [M, N] Gemm C is not a bias vector; it stays a float constant.
            node.inputs[2] = graph.add_constant(f"{node.name}_c", bias)


def apply_plan(
    graph: EdgeGraph,
    plan: Plan,
    ranges: dict[str, tuple[float, float]],
    symmetric: bool,
    per_channel: bool,
) -> dict[str, ActivationParams]:
    """Writes the plan into ``graph`` (which must be the graph the plan was made on)."""
    params = group_params(plan, ranges, symmetric)
    _unfold_impossible(plan, params, ranges)
    # Fold activations: the producer now writes the activation's output tensor directly.
    for producer, _, _ in plan.folds.values():
        activation = plan.fold_outputs[producer.outputs[0].name]
        out = activation.outputs[0]
        activation.outputs.clear()
        activation.inputs.clear()
        producer.outputs[0] = out
    constants: dict[str, tuple[gs.Constant, gs.Constant]] = {}
    for root in plan.groups():
        p = params[root]
        constants[root] = (
            _scalar(graph, f"{root}_scale", p.scale, np.float32),
            _scalar(graph, f"{root}_zero_point", p.zero_point, np.int8),
        )
    for node in list(plan.nodes.values()):
        _quantize_weights(graph, node, params, per_channel)
    for name, tensor in plan.tensors.items():
        if not tensor.inputs and not any(tensor is t for t in graph.inputs):
            continue  # a folded producer output that no longer exists
        scale, zero_point = constants[plan.root(name)]
        insert_qdq(graph, tensor, scale, zero_point)
    graph.cleanup()
    return params
