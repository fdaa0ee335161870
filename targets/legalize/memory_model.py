"""The arena of a legal graph, estimated before lowering: what the memory planner compares plans by.

The runtime-free program (:mod:`edgec.targets.tvm.relax_program`) runs one kernel per legal node in
:func:`edgec.ir.execution_order`, except where TVM merges them; the estimate follows the same rules
so that a plan's figure predicts the arena the build will have (the manifest records both):

* an element-wise integer node (add, multiply, rescale, dequantize) reading the output of a
  convolution or matrix product that only it reads is fused into that kernel (``FuseOps``): the
  reduction's own output never exists;
* a reshape, flatten or squeeze is a view when it does not reorder bytes in the NHWC layout the
  kernels use (rank at most 2, or no spatial extent), a copy otherwise; a ``Slice`` of a graph
  input is fused into the kernel that reads it; a ``Concat`` of rows (axis 2 of a batch-1 NCHW
  tensor: a patched stage's bands) is written in place by its producers
  (:func:`edgec.targets.tvm.arena.alias_concatenations`);
* an element-wise kernel whose input of the same size dies there writes over it;
* a convolution the target schedules row by row (``streams``: depthwise ones everywhere but in
  portable C, dense ones too with the SMLAD kernels) writes its output over its dying input from
  the margin :func:`edgec.targets.tvm.arena.row_overlaps` computes, so that step holds the union
  of the two, not their sum;
* graph inputs and outputs are the caller's buffers.

Kernel workspaces and stack arrays (padding windows, a few hundred bytes to a few KiB) are not
counted: they are small next to the activations the plans trade, and the build plans them exactly.
:func:`layer_at_a_time_bytes` is the reference figure of a CMSIS-NN-style runtime (every layer's
input and output whole, pools in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, execution_order, static_shape, tensor_bytes

__all__ = ["STREAMING", "MemoryEstimate", "estimate_arena", "layer_at_a_time_bytes", "streams"]

# Which convolutions a target's schedules write row by row (set per target in its legalization).
STREAMING = ("none", "depthwise", "all")
_ALIGNMENT = 16  # the runtime-free arena's (edgec.targets.tvm.arena.ARENA_ALIGNMENT)

_FUSIBLE = ("IntegerAdd", "IntegerMul", "IntegerRescale", "IntegerDequantize")
_REDUCTIONS = ("IntegerConv", "IntegerMatMul", "IntegerConvMaxPool", "IntegerConvAveragePool")
_VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
_POOLS = ("MaxPool", "AveragePool", "IntegerAveragePool")


@dataclass
class MemoryEstimate:
    """The estimated arena: its peak, the step (node) where it is reached and what is live there."""

    peak_bytes: int
    peak_node: str
    live: list[tuple[str, int]] = field(default_factory=list)


def _is_view(node: gs.Node) -> bool:
    if node.op not in _VIEWS:
        return False
    shape = static_shape(node.inputs[0])
    return shape is None or len(shape) <= 2 or prod(shape[2:]) == 1


def _is_row_concat(node: gs.Node) -> bool:
    shapes = [static_shape(t) for t in node.inputs]
    return (
        node.op == "Concat"
        and int(node.attrs.get("axis", 0)) == 2
        and all(s is not None and len(s) == 4 and s[0] == 1 for s in shapes)
    )


def streams(node: gs.Node, streaming: str) -> bool:
    """Whether the target's schedules write ``node``'s output row by row (``streaming`` is one of
    :data:`STREAMING`): a depthwise integer conv, or with ``all`` a dense one whose channels fit
    the SMLAD tile (input channels a multiple of 4, output channels of 2)."""
    if node.op != "IntegerConv" or streaming == "none":
        return False
    weight = node.inputs[1]
    # A weight stored sparse is read by the sparse kernel, which walks output channels, not rows.
    if not isinstance(weight, gs.Constant) or len(weight.shape) != 4:
        return False
    out_channels, group_channels = int(weight.shape[0]), int(weight.shape[1])
    group = int(node.attrs.get("group", 1))
    if group > 1:
        return group_channels == 1 and group == out_channels
    return streaming == "all" and group_channels % 4 == 0 and out_channels % 2 == 0


def _overlap_saving(node: gs.Node, source: gs.Tensor, out: gs.Tensor) -> int:
    """Bytes a row-streaming conv saves by writing over its dying input (arena.row_overlaps)."""
    shape_in, shape_out = static_shape(source), static_shape(out)
    if shape_in is None or shape_out is None or len(shape_in) != 4 or len(shape_out) != 4:
        return 0
    size_in, size_out = tensor_bytes(source), tensor_bytes(out)
    row_in, row_out = size_in // shape_in[2], size_out // shape_out[2]
    stride, pads = int(node.attrs["strides"][0]), [int(p) for p in node.attrs["pads"]]
    need = max(
        (y + 1) * row_out - max(0, y * stride - pads[0] - pads[2]) * row_in for y in range(shape_out[2])
    )
    margin = -(-max(need, 0) // _ALIGNMENT) * _ALIGNMENT
    return max(0, size_in + size_out - max(size_out, margin + size_in))


def estimate_arena(graph: EdgeGraph, streaming: str = "none") -> MemoryEstimate:
    """The peak of the live activation bytes of ``graph`` run as the program would (module
    docstring), with ``streaming`` convolutions (:func:`streams`) in place; shapes must be
    inferred."""
    order = execution_order(graph)
    caller = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    readers: dict[int, int] = {}
    producer: dict[int, gs.Node] = {}
    tensors: dict[int, gs.Tensor] = {}
    for node in order:
        for tensor in node.inputs:
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
        for tensor in node.outputs:
            producer[id(tensor)], tensors[id(tensor)] = node, tensor
    holder: dict[int, int] = {}  # tensor -> the tensor whose bytes hold it

    def find(key: int) -> int:
        while holder.get(key, key) != key:
            key = holder[key]
        return key

    def data(node: gs.Node) -> list[gs.Tensor]:
        return [t for t in node.inputs if t.name and not isinstance(t, gs.Constant)]

    step_of: dict[int, int] = {}
    kernels: list[str] = []
    gone: set[int] = set()  # outputs of reductions an element-wise node was fused into
    for node in order:
        inputs, out = data(node), node.outputs[0]
        if _is_view(node) or (node.op == "Slice" and id(node.inputs[0]) in caller):
            holder[id(out)] = id(inputs[0])  # a view, or a slice the next kernel reads in place
            continue
        fused = next(
            (t for t in inputs if producer.get(id(t)) is not None and producer[id(t)].op in _REDUCTIONS
             and readers.get(id(t)) == 1),
            None,
        )  # fmt: skip
        if node.op in _FUSIBLE and fused is not None:
            gone.add(id(fused))
            step_of[id(node)] = step_of[id(producer[id(fused)])]
            continue
        step_of[id(node)] = len(kernels)
        kernels.append(node.name)
        if _is_row_concat(node) and id(out) not in caller:
            for tensor in inputs:
                holder[find(id(tensor))] = id(out)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for node in order:
        if id(node) not in step_of:
            continue
        at = step_of[id(node)]
        for tensor in [*data(node), *node.outputs]:
            key = find(id(tensor))
            first[key], last[key] = min(first.get(key, at), at), max(last.get(key, at), at)
    for node in order:  # an element-wise kernel writes over an input of its size that dies there
        if node.op not in _FUSIBLE or id(node) not in step_of or any(id(t) in gone for t in data(node)):
            continue
        out = find(id(node.outputs[0]))
        for tensor in data(node):
            key = find(id(tensor))
            if (
                key not in caller
                and key != out
                and last[key] == step_of[id(node)]
                and (tensor_bytes(tensors[key]) == tensor_bytes(tensors[out]))
            ):
                holder[out] = key
                last[key] = last[out]
                break
    roots = {find(k) for k in first} - caller - gone
    live = [0] * len(kernels)
    for key in roots:
        for at in range(first[key], last[key] + 1):
            live[at] += tensor_bytes(tensors[key])
    for node in order:  # a row-streaming conv over its dying input
        source = node.inputs[0]
        key, out = find(id(source)), find(id(node.outputs[0]))
        if streams(node, streaming) and key in roots and out in roots and last[key] == step_of[id(node)]:
            live[step_of[id(node)]] -= _overlap_saving(node, tensors[key], tensors[out])
    if not live:
        return MemoryEstimate(0, "")
    peak = max(range(len(live)), key=lambda at: live[at])
    holding = sorted(
        ((tensors[k].name, tensor_bytes(tensors[k])) for k in roots if first[k] <= peak <= last[k]),
        key=lambda item: -item[1],
    )
    return MemoryEstimate(live[peak], kernels[peak], holding)


def layer_at_a_time_bytes(graph: EdgeGraph) -> int:
    """The arena of a layer-at-a-time runtime (CMSIS-NN style): the largest ``input + output`` of a
    layer, pools written over their input, views free, graph inputs and outputs counted (they are
    the activations of the first and last layer). Shapes must be inferred."""
    largest = 0
    for node in graph.nodes:
        if node.op in _VIEWS or node.op == "Constant":
            continue
        data = [t for t in node.inputs if t.name and not isinstance(t, gs.Constant)]
        inputs = sum(tensor_bytes(t) for t in data)
        outputs = sum(tensor_bytes(t) for t in node.outputs)
        largest = max(largest, inputs if node.op in _POOLS or node.op.endswith("Pool") else inputs + outputs)
    return largest
