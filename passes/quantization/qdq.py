"""Static int8 QDQ: which nodes and tensors to quantize (the plan; :mod:`.qdq_insert` writes it).

The scheme decides what has an int8 form at all; the target decides what it runs as integers:
when the pass context carries the target's capabilities, a node the target would leave in float
(``Capabilities.integer_refusal``: a 3-D convolution, a MatMul of two activations, ...) stays in
float here, with the target's reason, instead of being quantized and then run in float.

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

from edgec.capabilities import Capabilities
from edgec.ir import EdgeGraph
from edgec.passes.quantization.numerics import ActivationParams, activation_params, check_finite

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


def target_refusal(node: gs.Node, graph: EdgeGraph, capabilities: Capabilities | None) -> str | None:
    """Why the target would run ``node`` in float once quantized (``None``: it would not, or no
    target constrains the plan)."""
    return None if capabilities is None else capabilities.integer_refusal(node, graph)


def make_plan(
    graph: EdgeGraph,
    exclude: frozenset[str],
    symmetric: bool,
    shared_concat: bool = True,
    capabilities: Capabilities | None = None,
) -> Plan:
    """Chooses nodes and tensors for static int8 (``exclude`` names nodes kept in float).

    ``shared_concat``: Concat inputs and output share one scale (the TFLite int8 convention: Concat
    is a copy, no requantization); otherwise each keeps its own, which is finer when the inputs'
    ranges differ (inception_v1: relative error 0.124 shared vs 0.102 separate). ``capabilities``:
    the target's; nodes it would not run as integers stay float with its reason.
    """
    plan = Plan()
    graph.gs.toposort()
    for node in graph.nodes:
        if node.op not in COMPUTE_OPS:
            continue
        reason = "excluded by the user or the mixed-precision search" if node.name in exclude else None
        reason = reason or refusal_reason(node) or target_refusal(node, graph, capabilities)
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
    # Reshape/Transpose propagate), unless the target would not move them on int8.
    for node in graph.nodes:
        reason = target_refusal(node, graph, capabilities) if node.op in SHARED_SCALE_OPS else None
        if reason:
            plan.refused[node.name] = reason
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            skip = node.name in plan.nodes or node.name in exclude or node.name in plan.refused
            if node.op not in SHARED_SCALE_OPS or skip:
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
