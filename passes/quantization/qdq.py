"""Static int8 QDQ: which nodes and tensors to quantize (the plan), and writing it into a graph.

The output is the standard QDQ form onnxruntime and edgec's integer lowering read: every quantized
activation ``t`` becomes ``DequantizeLinear(QuantizeLinear(t, s, z), s, z)``; a Conv/Gemm/MatMul
reads its weight through ``DequantizeLinear(int8 W, s_w, 0, axis)`` and its bias through
``DequantizeLinear(int32 b, s_x * s_w, 0)`` with ``b_q = round(b / (s_x * s_w))``.

- Relu and Clip right after a quantized node are folded: the node's output is quantized with the
  activation's range, whose lower end is exactly representable (``z = -128`` for ``[0, hi]``), so
  QuantizeLinear's saturation performs the clamp and the activation node disappears.
- Concat inputs and output share one scale (the union of their ranges) so that Concat stays a
  copy (optionally separate scales, requantized by Concat). MaxPool, Reshape, Flatten, Transpose,
  Squeeze, Unsqueeze and inference Dropout/Identity share their input's scale.
- Anything else stays in float between a DequantizeLinear and a QuantizeLinear; the plan records
  each such node and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.quantization.numerics import (
    ActivationParams,
    activation_params,
    check_finite,
    integer_constant,
    quantize_weight,
)

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
COMPUTE_OPS = (*WEIGHT_OPS, "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool")
# Ops that move or select values without changing them (Dropout and Identity at inference).
SHARED_SCALE_OPS = (
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Dropout",
    "Identity",
)
FOLDABLE_ACTIVATIONS = ("Relu", "Clip")


def _is_float(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def _activations(node: gs.Node) -> list[gs.Variable]:
    return [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]


def refusal_reason(node: gs.Node) -> str | None:
    """Why ``node`` stays in float, or ``None`` when the int8 scheme handles it."""
    if node.op not in COMPUTE_OPS:
        if node.op in SHARED_SCALE_OPS:
            return "its input is not quantized (it shares its input's scale when that one is)"
        return f"{node.op} has no int8 form in the QDQ scheme; it runs in float"
    if len(node.outputs) != 1 or not _is_float(node.outputs[0]):
        return "its output is not a single float32 tensor"
    activations = _activations(node)
    if not activations:
        return "it has no activation input (constant folding should remove it)"
    for tensor in activations:
        if not _is_float(tensor):
            return f"input '{tensor.name}' is not float32"
    if node.op in WEIGHT_OPS:
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if node.op == "MatMul" and isinstance(weight, gs.Variable):
            return None  # activation x activation: both inputs per-tensor
        if not isinstance(weight, gs.Constant):
            return "its weight is not a constant"
        if weight.values.dtype != np.float32:
            return f"its weight '{weight.name}' is {weight.values.dtype}, not float32"
        check_finite(weight, node)
        if node.op == "Gemm":
            if node.attrs.get("transA", 0):
                return "Gemm with transA=1 is not supported (transpose the input first)"
            if weight.values.ndim != 2:
                return "Gemm weight is not 2-D"
            if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
                return "its bias is not a constant"
        if node.op == "Conv" and len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
            return "its bias is not a constant"
    if node.op == "Concat" and any(isinstance(t, gs.Constant) for t in node.inputs):
        return "Concat with a constant input is not supported"
    if node.op in ("Add", "Mul"):
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant):
                if tensor.values.dtype != np.float32:
                    return f"constant operand '{tensor.name}' is not float32"
                check_finite(tensor, node)
    return None


@dataclass
class Plan:
    """What to quantize: nodes, tensors, scale-sharing groups and folded activations."""

    nodes: dict[str, gs.Node] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, gs.Variable] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)
    # activation node name -> (producer node, the activation's lower and upper clamp)
    folds: dict[str, tuple[gs.Node, float, float]] = field(default_factory=dict)
    # producer output name -> the activation node whose output replaces it
    fold_outputs: dict[str, gs.Node] = field(default_factory=dict)

    def add(self, tensor: gs.Variable) -> None:
        self.tensors.setdefault(tensor.name, tensor)
        self.parent.setdefault(tensor.name, tensor.name)

    def root(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        self.parent[self.root(a)] = self.root(b)

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.tensors:
            out.setdefault(self.root(name), []).append(name)
        return out

    def calibration_names(self) -> list[str]:
        """Tensors whose range calibration must measure (incl. unfolded fallbacks)."""
        names = set(self.tensors)
        for producer, _, _ in self.folds.values():
            names.add(producer.outputs[0].name)
        return sorted(names)


def _clamp_bounds(node: gs.Node) -> tuple[float, float] | None:
    if node.op == "Relu":
        return 0.0, float("inf")
    bounds = [-float("inf"), float("inf")]
    for index, tensor in enumerate(node.inputs[1:3]):
        if not tensor.name:
            continue
        if not isinstance(tensor, gs.Constant):
            return None
        bounds[index] = float(np.asarray(tensor.values).reshape(()))
    return bounds[0], bounds[1]


def make_plan(graph: EdgeGraph, exclude: frozenset[str], symmetric: bool, shared_concat: bool = True) -> Plan:
    """Chooses nodes and tensors for static int8 (``exclude`` names nodes kept in float).

    ``shared_concat``: Concat inputs and output share one scale (the TFLite int8 convention: Concat
    is a copy, no requantization); otherwise each keeps its own, which is finer when the inputs'
    ranges differ (inception_v1: relative error 0.124 shared vs 0.102 separate).
    """
    plan = Plan()
    graph.gs.toposort()
    for node in graph.nodes:
        if node.op not in COMPUTE_OPS:
            continue
        reason = "excluded by the user or the mixed-precision search" if node.name in exclude else None
        reason = reason or refusal_reason(node)
        if reason:
            plan.refused[node.name] = reason
        else:
            plan.nodes[node.name] = node
    for node in plan.nodes.values():
        for tensor in _activations(node):
            plan.add(tensor)
        output = node.outputs[0]
        consumers = list(output.outputs)
        folded = False
        # A zero point can only pin the lower clamp for asymmetric ranges; symmetric ones keep Relu.
        if not symmetric and len(consumers) == 1 and not graph.is_graph_output(output):
            activation = consumers[0]
            bounds = _clamp_bounds(activation) if activation.op in FOLDABLE_ACTIVATIONS else None
            if bounds is not None and bounds[0] <= 0.0 <= bounds[1] and _is_float(activation.outputs[0]):
                plan.folds[activation.name] = (node, *bounds)
                plan.fold_outputs[output.name] = activation
                plan.add(activation.outputs[0])
                folded = True
        if not folded:
            plan.add(output)
        if node.op == "Concat" and shared_concat:
            for tensor in node.inputs:
                plan.union(tensor.name, node.outputs[0].name)
    # Shared-scale ops join when their input or output is quantized (to a fixed point: chains of
    # Reshape/Transpose propagate).
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if node.op not in SHARED_SCALE_OPS or node.name in plan.nodes or node.name in exclude:
                continue
            data, output = node.inputs[0], node.outputs[0]
            if any(extra.outputs or graph.is_graph_output(extra) for extra in node.outputs[1:]):
                continue  # MaxPool indices or a Dropout mask is used: not a pure copy
            if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
                continue  # training_mode given at run time
            if not (_is_float(data) and _is_float(output)) or isinstance(data, gs.Constant):
                continue
            if data.name in plan.tensors or output.name in plan.tensors:
                plan.nodes[node.name] = node
                plan.add(data)
                plan.add(output)
                plan.union(output.name, data.name)
                changed = True
    for node in graph.nodes:
        if node.name not in plan.nodes and node.name not in plan.refused and node.name not in plan.folds:
            plan.refused[node.name] = refusal_reason(node) or "not quantized"
    return plan


def group_params(
    plan: Plan, ranges: dict[str, tuple[float, float]], symmetric: bool
) -> dict[str, ActivationParams]:
    """Int8 parameters per tensor: each scale-sharing group quantizes the union of its ranges."""
    params: dict[str, ActivationParams] = {}
    for members in plan.groups().values():
        lo = min(ranges[m][0] for m in members)
        hi = max(ranges[m][1] for m in members)
        shared = activation_params(lo, hi, symmetric)
        for member in members:
            params[member] = shared
    return params


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
            "in float between its producer's and its own QDQ"
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
