"""A legal graph → a Relax module: edgec's own nodes by their own emission, the rest by TVM's
ONNX frontend. No rewrite happens here (the legalization passes did them, recorded).

``from_onnx`` has no public hook for custom converters; :func:`importer_class` subclasses
``ONNXGraphImporter`` and overrides two methods (``_check_for_unsupported_ops``,
``_convert_operator``), the narrowest surface that keeps initializers, graph inputs/outputs, shape
handling and ``If`` in TVM's hands. An ``edgec.Integer*`` node is emitted by its kind
(:mod:`edgec.targets.integer`), reading its parameters from the legal graph's node (the same the
numpy reference reads); an ``edgec.PackedDequantize`` by :func:`.packed_weights.emit_dequantize`.
An ``edgec.SparseWeight`` is not translated on its own: its readers' kernels read its arrays
(:mod:`.sparse_kernels`), so it leaves the model the frontend sees (:func:`detach_sparse_weights`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import onnx
import onnx_graphsurgeon as gs

from edgec.errors import UnsupportedNodeError
from edgec.ir import EdgeGraph, execution_order, static_shape
from edgec.targets.integer.kernels import kind_of
from edgec.targets.tvm.frontend import EDGEC_OPS, input_signature, run_frontend, unsupported_nodes
from edgec.targets.tvm.packed_layout import PACKED_DOMAIN, PACKED_OP, spec_of
from edgec.targets.tvm.sparse_kernels import SPARSE_READERS
from edgec.targets.tvm.sparse_layout import is_sparse

if TYPE_CHECKING:
    import tvm

__all__ = ["detach_sparse_weights", "importer_class", "just_in_time", "translate"]


def _is_packed(node: onnx.NodeProto) -> bool:
    return node.op_type == PACKED_OP and node.domain == PACKED_DOMAIN


def just_in_time(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Each ``PackedDequantize`` moved right before the first node that reads its output.

    Exporters (and a topological sort) put weight decodes first; emitted in that order, every
    decoded float weight would be live from the start of the program to its consumer, and the
    memory planners would have to hold all of them at once (on the digits CNN for Cortex-M4: a
    71 KB arena instead of 14 KB). Just in time, each is live only until its consumer has run. A
    node with subgraphs may read the weight implicitly, so it counts as a reader.
    """
    pending = {n.output[0]: n for n in nodes if _is_packed(n)}
    ordered: list[onnx.NodeProto] = []
    for node in nodes:
        if _is_packed(node):
            continue
        has_subgraph = any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        )
        readers = list(pending) if has_subgraph else [i for i in node.input if i in pending]
        ordered.extend(pending.pop(name) for name in dict.fromkeys(readers))
        ordered.append(node)
    return ordered + list(pending.values())  # read only as graph outputs


def detach_sparse_weights(graph: EdgeGraph, model: onnx.ModelProto) -> dict[str, gs.Node]:
    """Removes the ``SparseWeight`` nodes from ``model`` (the ONNX form of ``graph``) and empties
    the input slot their readers read them through; returns the float readers by name (the
    integer ones find their weight through their own node).

    Raises:
        UnsupportedNodeError: for a reader that has no sparse kernel (the legalization never
            makes one; a hand-written legal graph may).
    """
    readers: dict[str, gs.Node] = {}
    detached: set[str] = set()
    for node in graph.nodes:
        if not is_sparse(node):
            continue
        weight = node.outputs[0]
        for reader in weight.outputs:
            slots = [i for i, tensor in enumerate(reader.inputs) if tensor is weight]
            if reader.op not in SPARSE_READERS or slots != [1] or graph.is_graph_output(weight):
                reason = f"it reads the sparse weight '{node.name}' but has no sparse kernel that reads it"
                raise UnsupportedNodeError(reader.name, reader.op, reason)
            if reader.domain != PACKED_DOMAIN:
                readers[reader.name] = reader
        detached.add(weight.name)
    if detached:
        kept = [n for n in model.graph.node if not (n.domain == PACKED_DOMAIN and n.output[0] in detached)]
        for onnx_node in kept:
            for index, name in enumerate(onnx_node.input):
                if name in detached:
                    onnx_node.input[index] = ""
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return readers


@functools.cache
def importer_class() -> type:
    """TVM's ``ONNXGraphImporter`` with edgec's own nodes emitted by edgec."""
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    from .packed_weights import emit_dequantize
    from .sparse_kernels import emit_sparse_reader

    class EdgecImporter(ONNXGraphImporter):
        def __init__(self, nodes: dict[str, gs.Node], *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._edgec_nodes = nodes

        def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
            rest = onnx.GraphProto()
            rest.node.extend(n for n in graph.node if n.domain != PACKED_DOMAIN)
            super()._check_for_unsupported_ops(rest)

        def _anchor(self) -> Any:
            return next((v for v in self._inputs.values() if isinstance(v, relax.Var)), None)

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            node = self._edgec_nodes.get(attrs["tvm_custom"]["name"])
            if node is not None and node.domain != PACKED_DOMAIN:  # a float reader of a sparse weight
                return emit_sparse_reader(self.bb, node, list(inputs))
            if op_name not in EDGEC_OPS:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            assert node is not None, attrs["tvm_custom"]["name"]
            if node.op == PACKED_OP:
                return emit_dequantize(self.bb, spec_of(node), inputs[0], self._anchor())
            kind = kind_of(node)
            assert kind is not None, node.op
            return self.bb.normalize(kind.emit(self.bb, node, list(inputs)[: kind.data_inputs]))

    return EdgecImporter


def translate(graph: EdgeGraph, input_shapes: dict[str, tuple[int, ...]] | None = None) -> tvm.IRModule:
    """The Relax module of a legal graph (function ``main`` taking the graph inputs in order).

    Args:
        graph: The legal graph (after the target's legalization); not modified.
        input_shapes: Static shapes for inputs whose declared shape is dynamic.

    Raises:
        UnsupportedNodeError: For the first node nothing can translate.
        EdgecError: If an input has no static shape or the frontend fails (naming the node).
    """
    model = graph.to_onnx()
    problems = unsupported_nodes(model)
    if problems:
        raise UnsupportedNodeError(*problems[0])
    shapes = dict(input_shapes or {})
    for tensor in graph.inputs:
        if tensor.name not in shapes and static_shape(tensor) is not None:
            shapes[tensor.name] = static_shape(tensor)
    shapes, dtypes = input_signature(model, shapes)
    # Emitted in execution order (the memory plan follows the program), packed weights just in time;
    # to_onnx exported the nodes in the graph's (just sorted) order.
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    in_order = [model.graph.node[position[id(node)]] for node in execution_order(graph)]
    del model.graph.node[:]
    model.graph.node.extend(in_order)
    sparse_readers = detach_sparse_weights(graph, model)
    ordered = just_in_time(list(model.graph.node))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    edgec_nodes = {node.name: node for node in graph.nodes if node.domain == PACKED_DOMAIN}
    edgec_nodes.update(sparse_readers)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = importer_class()(edgec_nodes, shapes, dtypes, keep_params_in_input=False, sanitize=True)
    return run_frontend(lambda: importer.from_onnx(model.graph, opset))
