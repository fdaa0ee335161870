"""Cost analyses over an ``EdgeGraph``: parameters, weight bytes, MACs and activation bytes per node.

MACs count multiply-accumulates of the compute-heavy ops (Conv, ConvTranspose, Gemm, MatMul and
their integer forms, including a legal graph's ``edgec`` nodes, which name the op they replace);
other ops count zero MACs. A constant shared by several nodes counts once in
the totals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import Fix
from edgec.ir.graph import EdgeGraph
from edgec.ir.shapes import static_shape


@dataclass(frozen=True)
class NodeCost:
    name: str
    op: str
    macs: int
    params: int
    weight_bytes: int
    output_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GraphCost:
    nodes: list[NodeCost]
    macs: int
    params: int
    weight_bytes: int

    def as_dict(self) -> dict:
        return {
            "nodes": [n.as_dict() for n in self.nodes],
            "totals": {"macs": self.macs, "params": self.params, "weight_bytes": self.weight_bytes},
        }


def _shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    if isinstance(tensor, gs.Constant):
        # The shape of the (possibly lazy) values: loading a packed INT4/INT2 initializer would
        # turn it into one byte per element, which no longer exports as the packed type.
        return tuple(int(d) for d in tensor.shape)
    return static_shape(tensor)


# Sub-byte types (ml_dtypes) report an itemsize of 1, but ONNX stores them packed.
_PACKED_BITS = {"int4": 4, "uint4": 4, "int2": 2, "uint2": 2}


def tensor_bytes(tensor: gs.Tensor) -> int:
    """Bytes of a tensor with a static shape (0 when unknown); 4- and 2-bit types count packed."""
    shape = _shape(tensor)
    if shape is None or tensor.dtype is None:
        return 0
    dtype = np.dtype(tensor.dtype)
    if dtype.name in _PACKED_BITS:
        return -(-prod(shape) * _PACKED_BITS[dtype.name] // 8)
    return prod(shape) * dtype.itemsize


def _conv_macs(node: gs.Node) -> int:
    out_shape = _shape(node.outputs[0])
    weight_shape = _shape(node.inputs[1])
    if out_shape is None or weight_shape is None:
        return 0
    window = node.attrs.get("pool_kernel_shape")
    if window is not None and node.domain == "edgec":
        # A conv fused with the pool that reads it (windows tiling the input): the node's output
        # is pooled, the conv computed every output of every window.
        out_shape = (*out_shape[:2], *(d * int(k) for d, k in zip(out_shape[2:], window, strict=True)))
    if node.op in ("ConvTranspose",):
        input_shape = _shape(node.inputs[0])
        return prod(input_shape) * prod(weight_shape[1:]) if input_shape else 0
    # weight [C_out, C_in/group, k...]; every output element reads C_in/group * prod(k) inputs.
    return prod(out_shape) * prod(weight_shape[1:])


def _matmul_macs(node: gs.Node) -> int:
    a_shape = _shape(node.inputs[0])
    out_shape = _shape(node.outputs[0])
    if a_shape is None or out_shape is None or not a_shape:
        return 0
    reduce_dim = a_shape[-1]
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        reduce_dim = a_shape[0]
    return prod(out_shape) * reduce_dim


_MACS = {
    "Conv": _conv_macs,
    "ConvInteger": _conv_macs,
    "QLinearConv": lambda n: 0,
    "ConvTranspose": _conv_macs,
    "Gemm": _matmul_macs,
    "MatMul": _matmul_macs,
    "MatMulInteger": _matmul_macs,
}


def node_cost(node: gs.Node) -> NodeCost:
    constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
    # An edgec node of a legal graph (an integer kernel) costs what the op it replaces costs.
    op = str(node.attrs.get("replaces", node.op)) if node.domain == "edgec" else node.op
    return NodeCost(
        name=node.name,
        op=node.op,
        macs=int(_MACS.get(op, lambda n: 0)(node)),
        params=sum(int(np.prod(t.shape)) for t in constants),
        weight_bytes=sum(tensor_bytes(t) for t in constants),
        output_bytes=sum(tensor_bytes(t) for t in node.outputs),
    )


def graph_cost(graph: EdgeGraph) -> GraphCost:
    """Per-node costs in topological order and their totals (shapes must be inferred first)."""
    graph.gs.toposort()
    nodes = [node_cost(node) for node in graph.nodes]
    unique = {id(t): t for t in graph.constants()}.values()
    return GraphCost(
        nodes=nodes,
        macs=sum(n.macs for n in nodes),
        params=sum(int(np.prod(t.shape)) for t in unique),
        weight_bytes=sum(tensor_bytes(t) for t in unique),
    )


def peak_live_bytes(graph: EdgeGraph) -> int:
    """The liveness lower bound of activation memory for the current topological order.

    A tensor is live from the step that produces it (step 0 for graph inputs) to its last use
    (the end for graph outputs); the bound is the largest sum of live bytes over the steps.
    Constants, and values computed from constants only, are not counted (they live in flash).
    """
    graph.gs.toposort()
    steps = len(graph.nodes)
    intervals: dict[int, tuple[int, int, int]] = {}
    outputs = {id(t) for t in graph.outputs}
    for tensor in graph.inputs:
        intervals[id(tensor)] = (0, 0, tensor_bytes(tensor))
    for step, node in enumerate(graph.nodes):
        for tensor in node.inputs:
            if id(tensor) in intervals:
                start, _, size = intervals[id(tensor)]
                intervals[id(tensor)] = (start, step, size)
        if all(isinstance(t, gs.Constant) for t in node.inputs if t.name):
            continue  # computed from constants only (a dequantized weight): folded at build time
        for tensor in node.outputs:
            intervals[id(tensor)] = (step, step, tensor_bytes(tensor))
    live = [0] * max(steps, 1)
    for key, (start, end, size) in intervals.items():
        if key in outputs:
            end = steps - 1
        for step in range(start, max(end, start) + 1):
            live[step] += size
    return max(live)


def input_dependencies(tensor: gs.Tensor) -> tuple[set[str], set[str]]:
    """The graph inputs ``tensor`` is computed from: those whose *values* it depends on, and those
    it depends on only through their shapes (via ``Shape``/``Size``).

    A refusal uses it to name its fix: freeze the value inputs (``--freeze-input``), or fix the
    shape of the others (``--input-shape``).
    """
    values: set[str] = set()
    shapes: set[str] = set()
    seen: set[int] = set()
    stack = [(tensor, False)]
    while stack:
        current, through_shape = stack.pop()
        if id(current) in seen or isinstance(current, gs.Constant):
            continue
        seen.add(id(current))
        if not current.inputs:
            if current.name:
                (shapes if through_shape else values).add(current.name)
            continue
        producer = current.inputs[0]
        reads_shape = producer.op in ("Shape", "Size")
        stack.extend((parent, through_shape or reads_shape) for parent in producer.inputs)
    return values, shapes


def dependency_fix(tensor: gs.Tensor) -> Fix | None:
    """The fix for a value that is still computed at run time: freeze the inputs it depends on,
    else fix the shapes of those it reads through ``Shape``; ``None`` when it depends on no input."""
    values, shapes = input_dependencies(tensor)
    if values:
        names = sorted(values)
        return Fix(
            "--freeze-input", f"{names[0]}=VALUE", f"it depends on the value of input {', '.join(names)}"
        )
    if shapes:
        names = sorted(shapes)
        return Fix(
            "--input-shape", f"{names[0]}=1x...", f"it depends on the shape of input {', '.join(names)}"
        )
    return None


def execution_order(graph: EdgeGraph) -> list[gs.Node]:
    """The nodes in the order a memory-minded runtime executes them: depth first from the graph
    outputs, each node right after the nodes it reads (inputs in order), so that a branch is
    finished before the next one starts (the row bands of a patched stage run one after the
    other, where a level-by-level topological sort would interleave them and keep every band's
    intermediates alive at once). Nodes no output depends on come last, in graph order."""
    producer = {id(out): node for node in graph.nodes for out in node.outputs}
    order: list[gs.Node] = []
    done: set[int] = set()
    for root in [producer[id(t)] for t in graph.outputs if id(t) in producer] + list(graph.nodes):
        stack: list[tuple[gs.Node, int]] = [(root, 0)]
        while stack:
            node, position = stack.pop()
            if id(node) in done:
                continue
            if position < len(node.inputs):
                stack.append((node, position + 1))
                source = producer.get(id(node.inputs[position]))
                if source is not None and id(source) not in done:
                    stack.append((source, 0))
                continue
            done.add(id(node))
            order.append(node)
    return order
