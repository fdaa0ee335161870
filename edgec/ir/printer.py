"""A stable, readable text form of an ``EdgeGraph`` (the torch.fx-style printout tests compare)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir.graph import EdgeGraph


def _type(tensor: gs.Tensor) -> str:
    dtype = np.dtype(tensor.dtype).name if tensor.dtype is not None else "?"
    if tensor.shape is None:
        return f"{dtype}[?]"
    return f"{dtype}[{','.join(str(d) for d in tensor.shape)}]"


def _operand(tensor: gs.Tensor) -> str:
    if isinstance(tensor, gs.Constant):
        shape = ",".join(str(d) for d in tensor.shape)
        return f"@{tensor.name}<{np.dtype(tensor.dtype).name}[{shape}]>"
    if not tensor.name:
        return "_"
    return f"%{tensor.name}"


def _attribute(value: object) -> str:
    if isinstance(value, gs.Graph):
        return f"<graph {value.name or ''} ({len(value.nodes)} nodes)>"
    if isinstance(value, gs.Tensor):
        return f"<tensor {_type(value)}>"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_attribute(v) for v in value) + "]"
    return repr(value)


def print_graph(graph: EdgeGraph) -> str:
    """Prints inputs, nodes in topological order (``%out = Op(%in, @const) {attrs}  # name``)."""
    lines = [f"graph {graph.name} (opset {graph.opset})"]
    for tensor in graph.inputs:
        lines.append(f"  input %{tensor.name}: {_type(tensor)}")
    graph.gs.toposort()
    for node in graph.nodes:
        outputs = ", ".join(_operand(t) for t in node.outputs)
        inputs = ", ".join(_operand(t) for t in node.inputs)
        attrs = ", ".join(f"{k}={_attribute(v)}" for k, v in sorted(node.attrs.items()))
        op = f"{node.domain}.{node.op}" if node.domain else node.op
        line = f"  {outputs} = {op}({inputs})"
        if attrs:
            line += f" {{{attrs}}}"
        lines.append(f"{line}  # {node.name}")
    for tensor in graph.outputs:
        lines.append(f"  output %{tensor.name}: {_type(tensor)}")
    return "\n".join(lines) + "\n"


def op_sequence(graph: EdgeGraph) -> list[str]:
    """The op types in topological order: the usual thing a structural test asserts on."""
    graph.gs.toposort()
    return [node.op for node in graph.nodes]
