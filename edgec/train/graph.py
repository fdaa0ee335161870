"""The ONNX graph that training imports: a fixed batch, trainable weights as the only initializers.

``relax.training`` differentiates a Relax function whose parameters are the weights
(``from_onnx(..., keep_params_in_input=True)`` turns every initializer into one), with the batch
size fixed at import. This module turns an inference ``EdgeGraph`` into that form:

- every input's leading axis of size 1 becomes the batch axis of size ``batch`` (a ``Reshape`` to a
  constant shape starting with 1 copies the batch instead);
- the trainable initializers (weights and biases of Conv/Gemm/MatMul, BatchNormalization's scale
  and shift, a bias added to a matmul, QDQ scales) keep their place, renamed ``param_<k>``; every
  other initializer (BatchNormalization's running statistics, shapes, zero points, Clip bounds)
  becomes a ``Constant`` node, i.e. a constant of the Relax function;
- ``Clip`` becomes ``lo + relu(x - lo) - relu(x - hi)`` (TVM imports Clip without a gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape

# (op, input index) slots whose initializer is trained.
TRAINABLE_SLOTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
    # The float weight and the scale of a fake-quantized tensor (quantization-aware training).
    "QuantizeLinear": (0, 1),
    "DequantizeLinear": (1,),
}
# An Add of a constant to one of these outputs is a bias (MatMul + Add in exported graphs).
_BIAS_PRODUCERS = ("MatMul", "Gemm", "Conv")
PARAM_PREFIX = "param_"


@dataclass
class TrainingGraph:
    """A batch-``batch`` ONNX model whose initializers are exactly the trainable tensors.

    Attributes:
        model: the ONNX model to import.
        sources: parameter name (``param_<k>``) -> the initializer's name in the source graph.
        inputs: the model's input names, in order.
        outputs: output names: the logits first, then the features a loss compares.
        batch: the batch size fixed in the model.
    """

    model: onnx.ModelProto
    sources: dict[str, str]
    inputs: list[str]
    outputs: list[str]
    batch: int
    initial: dict[str, np.ndarray] = field(default_factory=dict)


def batch_axis_check(graph: EdgeGraph) -> None:
    """Raises unless every input has a static shape with a leading axis of size 1 (the batch)."""
    for tensor in graph.inputs:
        shape = static_shape(tensor)
        if shape is None:
            raise EdgecError(f"input '{tensor.name}' has no static shape; fix it with --input-shape")
        if not shape or shape[0] != 1:
            raise EdgecError(
                f"input '{tensor.name}' has shape {list(shape)}; training needs a leading batch axis of "
                f"size 1 (fix it with --input-shape {tensor.name}=1x...)"
            )


def _trainable(graph: EdgeGraph) -> list[gs.Constant]:
    """Float initializers in trainable slots, in first-use order."""
    found: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        slots = TRAINABLE_SLOTS.get(node.op, ())
        if node.op == "Add":
            partners = [t for t in node.inputs if not isinstance(t, gs.Constant)]
            if len(partners) == 1 and partners[0].inputs and partners[0].inputs[0].op in _BIAS_PRODUCERS:
                slots = tuple(i for i, t in enumerate(node.inputs) if isinstance(t, gs.Constant))
        for index in slots:
            if index < len(node.inputs):
                tensor = node.inputs[index]
                if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float32:
                    found.setdefault(tensor.name, tensor)
    return list(found.values())


def _clip_bounds(graph: EdgeGraph, node: gs.Node) -> tuple[float | None, float | None]:
    if graph.opset < 11:
        return node.attrs.get("min"), node.attrs.get("max")
    bounds = list(node.inputs[1:3])
    if any(t.name and not isinstance(t, gs.Constant) for t in bounds):
        raise EdgecError(f"Clip '{node.name}' has bounds computed at run time; training needs constants")
    values = [float(np.asarray(t.values).reshape(())) if t.name else None for t in bounds]
    low, high = [*values, None, None][:2]
    return low, high


def _clip_as_relus(graph: EdgeGraph) -> None:
    """``clip(x, lo, hi) = lo + relu(x - lo) - relu(x - hi)``: TVM imports ONNX Clip (and Max/Min)
    as ops without gradients, Relu/Add/Sub have them. The exported model keeps its Clip."""
    for node in list(graph.nodes):
        if node.op != "Clip":
            continue
        low, high = _clip_bounds(graph, node)
        x, out = node.inputs[0], node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()

        def emit(op: str, inputs: list, target: gs.Variable | None = None, node=node) -> gs.Variable:
            result = target or gs.Variable(graph.fresh_name(f"{node.name}_{op.lower()}"), np.float32)
            graph.gs.nodes.append(gs.Node(op, graph.fresh_name(node.name), inputs=inputs, outputs=[result]))
            return result

        def const(value: float, node=node) -> gs.Constant:
            return graph.add_constant(f"{node.name}_bound", np.asarray(value, np.float32))

        value = x
        if low is not None:
            value = emit("Add", [const(low), emit("Relu", [emit("Sub", [x, const(low)])])])
        if high is not None:
            value = emit("Sub", [value, emit("Relu", [emit("Sub", [x, const(high)])])])
        emit("Identity", [value], out)
    graph.cleanup()


def batch_reshapes(graph: EdgeGraph) -> None:
    """Reshapes to a constant shape written for batch 1 copy the batch instead (in place)."""
    # A constant target shape written for batch 1 ([1, -1]) would fold the batch into the features.
    for node in graph.nodes:
        if node.op == "Reshape" and isinstance(node.inputs[1], gs.Constant):
            shape = np.asarray(node.inputs[1].values).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0  # "copy the input's dimension": the batch
                node.inputs[1] = graph.add_constant(f"{node.name}_batch_shape", shape.astype(np.int64))


def training_graph(graph: EdgeGraph, batch: int, features: tuple[str, ...] = ()) -> TrainingGraph:
    """The training form of ``graph`` (left untouched) at ``batch`` samples per step.

    Args:
        graph: an inference graph with batch-1 inputs and static shapes.
        batch: samples per training step.
        features: names of intermediate tensors to output after the first output (for a feature
            loss).

    Raises:
        EdgecError: an input without a leading batch axis of 1, an unknown feature, or no trainable
            weight.
    """
    batch_axis_check(graph)
    work = graph.copy()
    tensors = work.tensors()
    for name in features:
        if name not in tensors or isinstance(tensors[name], gs.Constant):
            raise EdgecError(f"feature '{name}' is not a computed tensor of the model")
    _clip_as_relus(work)
    batch_reshapes(work)
    trainable = _trainable(work)
    if not trainable:
        raise EdgecError(
            "the model has no trainable weight (float Conv/Gemm/MatMul/BatchNormalization initializers)"
        )
    sources = {}
    initial = {}
    for index, tensor in enumerate(trainable):
        name = f"{PARAM_PREFIX}{index}"
        sources[name] = tensor.name
        initial[name] = np.asarray(tensor.values, np.float32)
        tensor.name = name
    tensors = work.tensors()
    outputs = [work.outputs[0].name, *features]
    work.gs.outputs = [tensors[name] for name in outputs]
    model = work.to_onnx()
    _constants_as_nodes(model, set(sources))
    _set_batch(model, batch)
    return TrainingGraph(model, sources, [t.name for t in work.inputs], outputs, batch, initial)


def _constants_as_nodes(model: onnx.ModelProto, keep: set[str]) -> None:
    """Initializers not in ``keep`` become ``Constant`` nodes (constants, not parameters, in Relax)."""
    moved = [init for init in model.graph.initializer if init.name not in keep]
    kept = [init for init in model.graph.initializer if init.name in keep]
    nodes = [
        onnx.helper.make_node("Constant", [], [init.name], name=f"{init.name}__constant", value=init)
        for init in moved
    ]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    existing = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + existing)


def _set_batch(model: onnx.ModelProto, batch: int) -> None:
    del model.graph.value_info[:]
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
