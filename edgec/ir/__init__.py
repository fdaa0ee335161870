"""edgec's intermediate graph: ``EdgeGraph``, ONNX I/O, shapes, printing and cost analyses."""

from edgec.ir.analysis import (
    GraphCost,
    NodeCost,
    dependency_fix,
    execution_order,
    graph_cost,
    input_dependencies,
    node_cost,
    peak_live_bytes,
    tensor_bytes,
)
from edgec.ir.freeze import freeze_inputs, parse_freeze
from edgec.ir.graph import EdgeGraph, ModelInfo
from edgec.ir.io import atomic_path, external_data_files, load, read_model, save, save_model
from edgec.ir.printer import op_sequence, print_graph
from edgec.ir.shapes import (
    InputShapes,
    fix_input_shapes,
    format_shape,
    infer_shapes,
    parse_input_shape,
    parse_shape,
    static_shape,
)

__all__ = [
    "EdgeGraph",
    "GraphCost",
    "InputShapes",
    "ModelInfo",
    "NodeCost",
    "atomic_path",
    "dependency_fix",
    "execution_order",
    "external_data_files",
    "fix_input_shapes",
    "format_shape",
    "freeze_inputs",
    "graph_cost",
    "infer_shapes",
    "input_dependencies",
    "load",
    "node_cost",
    "op_sequence",
    "parse_freeze",
    "parse_input_shape",
    "parse_shape",
    "peak_live_bytes",
    "print_graph",
    "read_model",
    "save",
    "save_model",
    "static_shape",
    "tensor_bytes",
]
