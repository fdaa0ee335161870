"""fold-constants: nodes whose inputs are all constants (and Shape/Size of static tensors)
replaced by their values, each computed by onnxruntime, the engine verification trusts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError, NativeCrashError
from edgec.ir import EdgeGraph, static_shape
from edgec.passes.common import refresh_shapes
from edgec.pm import Pass, PassContext, PassResult, register

# Random ops must give fresh values on every run; quantize/dequantize ops on constant weights are
# the quantized model itself (folding them would store fp32 weights again).
_NEVER_FOLD = {
    "RandomNormal": "random values must differ between runs",
    "RandomUniform": "random values must differ between runs",
    "RandomNormalLike": "random values must differ between runs",
    "RandomUniformLike": "random values must differ between runs",
    "Multinomial": "random values must differ between runs",
    "Bernoulli": "random values must differ between runs",
    "Dropout": "Dropout is eliminate-identity's job",
    "QuantizeLinear": "keeps quantized weights quantized",
    "DequantizeLinear": "keeps quantized weights quantized",
    "DynamicQuantizeLinear": "keeps quantized weights quantized",
}


def _foldable(node: gs.Node, graph: EdgeGraph) -> str | None:
    """Why ``node`` cannot be folded (``None`` if it can), assuming its inputs are constant."""
    if node.domain not in (None, "", "ai.onnx"):
        return f"op of domain '{node.domain}'"
    if node.op in _NEVER_FOLD:
        return _NEVER_FOLD[node.op]
    if any(isinstance(value, gs.Graph) for value in node.attrs.values()):
        return "it has a subgraph"
    if any(not out.name for out in node.outputs):
        return "it has an unnamed output"
    if any(graph.is_graph_output(out) for out in node.outputs):
        return "its output is a graph output"
    return None


def _one_node_model(node: gs.Node, graph: EdgeGraph) -> onnx.ModelProto:
    # Copies of the inputs, so the evaluation graph never links into the real one.
    inputs = [
        gs.Constant(t.name, np.asarray(t.values)) if t.name else gs.Variable.empty() for t in node.inputs
    ]
    outputs = [gs.Variable(t.name) for t in node.outputs]
    copy = gs.Node(node.op, name=node.name, attrs=dict(node.attrs), inputs=inputs, outputs=outputs)
    model = gs.export_onnx(gs.Graph(nodes=[copy], outputs=outputs, opset=graph.opset), do_type_check=False)
    opset = [onnx.helper.make_opsetid("", graph.opset)]
    del model.opset_import[:]
    model.opset_import.extend(opset)
    model.ir_version = onnx.helper.find_min_ir_version_for(opset)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _evaluate(node: gs.Node, graph: EdgeGraph, max_bytes: int) -> tuple[list[np.ndarray] | None, str]:
    """Runs one constant node with onnxruntime (the same engine verification trusts)."""
    from edgec.verify import run_onnx

    try:
        model = _one_node_model(node, graph)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        return None, f"shape inference failed: {str(exc).strip().splitlines()[0]}"
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if not tensor_type.elem_type:
            return None, f"the dtype of '{output.name}' is unknown"
        dims = tensor_type.shape.dim if tensor_type.HasField("shape") else None
        if dims is not None and all(d.HasField("dim_value") for d in dims):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
            size = int(np.prod([d.dim_value for d in dims], dtype=np.int64)) * itemsize
            if size > max_bytes:  # refuse before materialising
                return None, f"result '{output.name}' would be {size} bytes (max_bytes={max_bytes})"
    try:
        results = run_onnx(model, {}, f"the constant {node.op} '{node.name}' (fold-constants)")
    except NativeCrashError:
        raise  # a crash is an error of its own, not a reason to leave one node unfolded
    except EdgecError as exc:
        return None, str(exc)
    values = [np.asarray(results[out.name]) for out in node.outputs]
    for out, value in zip(node.outputs, values, strict=True):
        if value.nbytes > max_bytes:
            return None, f"result '{out.name}' is {value.nbytes} bytes (max_bytes={max_bytes})"
    return values, ""


def _shape_value(node: gs.Node) -> np.ndarray | None:
    """The value of ``Shape``/``Size`` of a tensor whose shape is static, else ``None``."""
    shape = static_shape(node.inputs[0])
    if shape is None:
        return None
    if node.op == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return np.array(shape[start:end], dtype=np.int64)


@register
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Replaces nodes whose inputs are all constants (and Shape of static tensors) by their values.

    Attributes:
        max_bytes: largest result materialised as an initializer; bigger ones stay as nodes.
        fold_shapes: also fold ``Shape``/``Size`` of tensors whose inferred shape is static.
    """

    name: ClassVar[str] = "fold-constants"
    lossless: ClassVar[bool] = True
    max_bytes: int = 16 << 20
    fold_shapes: bool = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        if self.fold_shapes:
            refresh_shapes(graph, ctx, {"Shape", "Size"})
        graph.gs.toposort()
        folded = 0
        refused: list[dict[str, Any]] = []
        for node in list(graph.nodes):
            values = self._fold(node, graph, refused)
            if values is None:
                continue
            for out, value in zip(list(node.outputs), values, strict=True):
                node.outputs.remove(out)
                # In place, so consumers keep reading the same (now constant) tensor by name.
                out.to_constant(value)
            node.inputs.clear()
            folded += 1
        if folded:
            graph.cleanup()
        stats: dict[str, Any] = {"folded": folded}
        if refused:
            stats["refused"] = refused
        return PassResult(graph, changed=folded > 0, stats=stats)

    def _fold(self, node: gs.Node, graph: EdgeGraph, refused: list[dict[str, Any]]) -> list | None:
        present = [t for t in node.inputs if t.name]
        if self.fold_shapes and node.op in ("Shape", "Size") and not isinstance(present[0], gs.Constant):
            value = _shape_value(node)
            if value is None or _foldable(node, graph):
                return None
            return [value]
        if not all(isinstance(t, gs.Constant) for t in present) or not node.outputs:
            return None
        reason = _foldable(node, graph)
        if reason is None:
            values, reason = _evaluate(node, graph, self.max_bytes)
            if values is not None:
                return values
        refused.append({"node": node.name, "op": node.op, "reason": reason})
        return None
