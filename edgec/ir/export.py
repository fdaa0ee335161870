"""ONNX export of an onnx-graphsurgeon graph with each weight copied once, or with no weight
bytes at all (the form shape inference reads).

onnx-graphsurgeon's ``export_onnx`` copies every weight three times (``tobytes``, ``make_graph``'s
``extend`` and ``make_model``'s ``CopyFrom``): seconds on a VGG, for every export. Here the graph
proto is filled in place: a lazily loaded initializer is copied once from the proto it came from,
an array is serialized once into its place. Nodes, attributes, value infos and functions go
through onnx-graphsurgeon's own exporter.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues


def _nbytes(tensor: gs.Constant) -> int:
    """Bytes of a constant's values, without loading lazy ones."""
    # ``_values``: gs offers no public way to ask without loading (``values`` loads).
    return int(tensor._values.nbytes)


def _onnx_dtype(tensor: gs.Constant) -> int:
    """The ONNX element type a constant exports as, without loading lazy ones (loading a packed
    INT4 initializer would turn it into one byte per element)."""
    if isinstance(tensor._values, LazyValues):
        return int(tensor._values.tensor.data_type)
    return int(dtype_to_onnx(tensor.export_dtype))


def _typed_input(name: str, tensor: gs.Constant) -> onnx.ValueInfoProto:
    shape = [int(d) for d in tensor.shape]
    return onnx.helper.make_tensor_value_info(name, _onnx_dtype(tensor), shape)


def _append_constant(initializers, tensor: gs.Constant) -> None:
    values = tensor._values
    if isinstance(values, LazyValues):
        initializers.append(values.tensor)
        # Renamed on the appended copy, not on the source proto that graph copies share.
        initializers[-1].name = tensor.name
        return
    if values.dtype.kind in "biufc" and dtype_to_onnx(values.dtype) == dtype_to_onnx(tensor.export_dtype):
        proto = initializers.add()
        proto.name = tensor.name
        proto.data_type = dtype_to_onnx(values.dtype)
        proto.dims.extend(values.shape)
        proto.raw_data = values.tobytes()
        if tensor.data_location is not None:
            proto.data_location = tensor.data_location
        return
    # Types numpy stores unlike ONNX (bfloat16, float8, packed 4-bit): gs converts them.
    initializers.append(OnnxExporter.export_tensor_proto(tensor))


def _large_constant_node(node: gs.Node, weight_limit: int | None) -> gs.Constant | None:
    """The value of a ``Constant`` node of more than ``weight_limit`` bytes, else ``None``."""
    value = node.attrs.get("value") if node.op == "Constant" else None
    if weight_limit is None or not isinstance(value, gs.Constant):
        return None
    return value if _nbytes(value) > weight_limit else None


def fill_graph(proto: onnx.GraphProto, graph: gs.Graph, weight_limit: int | None = None) -> None:
    """Exports ``graph`` into the empty ``proto``, as ``gs.export_onnx`` would.

    Args:
        weight_limit: when given, constants of the main graph (initializers and ``Constant``
            nodes) of more than this many bytes become typed graph inputs after the real inputs:
            their dtype and shape are exported, their bytes are not. Subgraphs are exported whole.
    """
    proto.name = graph.name or ""
    if graph.doc_string:
        proto.doc_string = graph.doc_string
    moved = []
    boundary = {t.name for t in (*graph.inputs, *graph.outputs)}
    for node in graph.nodes:
        large = _large_constant_node(node, weight_limit)
        if large is None:
            proto.node.append(OnnxExporter.export_node(node))
        else:
            moved.append(_typed_input(node.outputs[0].name, large))
            boundary.add(node.outputs[0].name)
    proto.input.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)
    proto.output.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            if isinstance(tensor._values, SparseValues):
                proto.sparse_initializer.append(OnnxExporter.export_sparse_tensor_proto(tensor))
            elif weight_limit is not None and _nbytes(tensor) > weight_limit:
                moved.append(_typed_input(tensor.name, tensor))
            else:
                _append_constant(proto.initializer, tensor)
        elif tensor.name not in boundary and (tensor.dtype is not None or tensor.shape is not None):
            proto.value_info.append(OnnxExporter.export_value_info_proto(tensor, False))
    proto.input.extend(moved)


def export_functions(graph: gs.Graph) -> list[onnx.FunctionProto]:
    """The graph's local functions as ONNX ``FunctionProto``s."""
    return [OnnxExporter.export_function(function) for function in graph.functions]
