"""Row bands of a CNN's first stages (MCUNetV2's patch-based inference, one axis): the plan.

A stage that ends at tensor ``T`` (every node ``T`` depends on: the *prefix*) can run band by band:
band ``j`` computes rows ``[a_j, b_j)`` of ``T`` from the rows of each prefix tensor that those
rows read, back to a slice of the graph input. Only one band's intermediates are alive at a time,
instead of each prefix tensor whole; neighbouring bands recompute the rows they share (the
*halo*), which costs extra multiply-accumulates. Row ``y`` of a node's output reads the input rows
``y·stride - pad_top + i·dilation`` (``i < kernel``): a :class:`RowWindow`. For the rows
``[lo, hi)`` of an output, :meth:`RowWindow.needs` gives the input rows and how many padding rows
the band's copy of the node adds above and below (only at the image borders; inside, the halo
rows are real data). Bands split along the height only: their outputs are consecutive rows of
``T``, contiguous in the NHWC layout the kernels use, so the concatenation can be the bands
writing into their rows of ``T`` (:mod:`edgec.targets.tvm.relax_program`).

:func:`plan_bands` checks the prefix (every node a row-local op of the table below, every prefix
tensor read only inside the prefix, by one node) and computes the rows and padding of every node
of every band; :mod:`.patch_stages` rewrites the graph with it, the memory planner
(:mod:`.plan_memory`) prices it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, execution_order, node_cost, static_shape

__all__ = ["BandPlan", "NotPatchable", "RowWindow", "band_bounds", "plan_bands", "row_window"]


class NotPatchable(Exception):
    """A stage that cannot run in row bands; the message says why."""


# Ops whose output row y reads a window of input rows, with the input shape's height.
_ELEMENTWISE = ("IntegerQuantize", "IntegerAdd", "IntegerMul", "IntegerRescale")
_CONVOLUTIONS = ("IntegerConv", "IntegerConvMaxPool", "IntegerConvAveragePool")
_POOLS = ("MaxPool", "IntegerAveragePool")


@dataclass(frozen=True)
class RowWindow:
    """Output row ``y`` reads input rows ``y·stride - pad_top + i·dilation`` for ``i < kernel``."""

    kernel: int = 1
    stride: int = 1
    pad_top: int = 0
    dilation: int = 1

    def needs(self, lo: int, hi: int, height: int) -> tuple[int, int, int, int]:
        """``(first, end, pad_top, pad_bottom)``: the input rows ``[first, end)`` (inside the
        image) that output rows ``[lo, hi)`` read, and the padding rows outside it."""
        first = lo * self.stride - self.pad_top
        end = (hi - 1) * self.stride - self.pad_top + (self.kernel - 1) * self.dilation + 1
        return max(0, first), min(height, end), max(0, -first), max(0, end - height)


def _window_2d(node: gs.Node, prefix: str = "") -> RowWindow:
    kernel = [int(k) for k in node.attrs.get(prefix + "kernel_shape", [1, 1])]
    strides = [int(s) for s in node.attrs.get(prefix + "strides", [1, 1])]
    pads = [int(p) for p in node.attrs.get(prefix + "pads", [0, 0, 0, 0])]
    dilations = [int(d) for d in node.attrs.get(prefix + "dilations", [1, 1])]
    return RowWindow(kernel[0], strides[0], pads[0], dilations[0])


def row_window(node: gs.Node) -> RowWindow:
    """The row window of a prefix node; raises :class:`NotPatchable` for an op that is not row-local."""
    label = f"{node.op} '{node.name}'"
    if node.op in _ELEMENTWISE:
        return RowWindow()
    if node.op in _CONVOLUTIONS:
        weight, shape = node.inputs[1], static_shape(node.inputs[0])
        if len(weight.shape) != 4 or shape is None or len(shape) != 4:
            raise NotPatchable(f"{label} is not a 2-D convolution")
        kernel = int(weight.shape[2])
        strides = [int(s) for s in node.attrs["strides"]]
        conv = RowWindow(kernel, strides[0], int(node.attrs["pads"][0]), int(node.attrs["dilations"][0]))
        if node.op == "IntegerConv":
            return conv
        pool = _window_2d(node, "pool_")
        # Pooled row p reads conv rows p·s_p + i (i < k_p, no padding), each a conv window.
        span = (pool.kernel - 1) * conv.stride + (conv.kernel - 1) * conv.dilation + 1
        return RowWindow(span, pool.stride * conv.stride, conv.pad_top)
    if node.op in _POOLS and "kernel_shape" in node.attrs:
        if node.op == "MaxPool" and (node.attrs.get("ceil_mode", 0) or len(node.attrs["kernel_shape"]) != 2):
            raise NotPatchable(f"{label} uses ceil_mode or is not 2-D")
        if node.op == "IntegerAveragePool" and any(int(p) for p in node.attrs.get("pads", ())):
            raise NotPatchable(f"{label} is padded (its divisor depends on the output position)")
        return _window_2d(node)
    raise NotPatchable(f"{label} is not a row-local op (elementwise, convolution, pooling)")


def _pad_attr(node: gs.Node) -> str | None:
    """The attribute holding the node's (top, left, bottom, right) padding, if it has one."""
    return "pads" if node.op in (*_CONVOLUTIONS, *_POOLS) else None


@dataclass
class BandPlan:
    """The row bands of the prefix ending at ``until``.

    Attributes:
        until: the tensor the bands make (their outputs concatenated by rows).
        nodes: the prefix nodes in execution order.
        inputs: the graph inputs the prefix reads.
        bands: per band, the rows ``[lo, hi)`` of every prefix tensor (by name) it computes.
        pads: per band, ``(top, bottom)`` padding of every prefix node (by name) that pads.
        macs: multiply-accumulates of the prefix, whole.
        band_macs: multiply-accumulates of the prefix over all bands (halo rows included).
    """

    until: str
    nodes: list[gs.Node]
    inputs: list[gs.Variable]
    bands: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    pads: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    macs: int = 0
    band_macs: int = 0

    @property
    def extra_macs(self) -> int:
        return self.band_macs - self.macs


def band_bounds(height: int, bands: int) -> list[tuple[int, int]]:
    """``bands`` consecutive row ranges of nearly equal size covering ``[0, height)``."""
    edges = [round(j * height / bands) for j in range(bands + 1)]
    return [(edges[j], edges[j + 1]) for j in range(bands)]


def _height(tensor: gs.Tensor) -> int:
    shape = static_shape(tensor)
    if shape is None or len(shape) != 4 or shape[0] != 1:
        raise NotPatchable(f"tensor '{tensor.name}' is not [1, C, H, W] with a static shape")
    return int(shape[2])


def _prefix(graph: EdgeGraph, until: gs.Tensor) -> list[gs.Node]:
    """Every node ``until`` depends on, in execution order."""
    needed: set[int] = set()
    stack = [until]
    while stack:
        tensor = stack.pop()
        for producer in tensor.inputs:
            if id(producer) not in needed:
                needed.add(id(producer))
                stack.extend(t for t in producer.inputs if not isinstance(t, gs.Constant))
    return [node for node in execution_order(graph) if id(node) in needed]


def plan_bands(graph: EdgeGraph, until: str, bands: int) -> BandPlan:
    """The row-band plan of the stage ending at tensor ``until``; raises :class:`NotPatchable`.

    Shapes must be inferred. MACs of a band's node are counted on its output rows.
    """
    tensor = graph.tensors().get(until)
    if tensor is None or isinstance(tensor, gs.Constant) or not tensor.inputs:
        raise NotPatchable(f"'{until}' is not a tensor computed by the graph")
    height = _height(tensor)
    if not 2 <= bands <= height:
        raise NotPatchable(f"{bands} bands of the {height} rows of '{until}': between 2 and {height}")
    nodes = _prefix(graph, tensor)
    names = {id(n) for n in nodes}
    windows = {node.name: row_window(node) for node in nodes}
    graph_inputs = {id(t) for t in graph.inputs}
    inputs: list[gs.Variable] = []
    for node in nodes:
        if len(node.outputs) != 1:
            raise NotPatchable(f"{node.op} '{node.name}' has {len(node.outputs)} outputs")
        out = node.outputs[0]
        if out is not tensor and (graph.is_graph_output(out) or any(id(c) not in names for c in out.outputs)):
            raise NotPatchable(f"'{out.name}' is also read after the stage")
        if out is not tensor and len(out.outputs) != 1:
            readers = len(out.outputs)
            raise NotPatchable(f"'{out.name}' is read by {readers} nodes of the stage (bands need a chain)")
        _height(out)
        for source in node.inputs:
            if id(source) in graph_inputs and all(source is not t for t in inputs):
                _height(source)
                inputs.append(source)
    plan = BandPlan(until, nodes, inputs, macs=sum(node_cost(n).macs for n in nodes))
    for lo, hi in band_bounds(height, bands):
        rows: dict[str, tuple[int, int]] = {until: (lo, hi)}
        pads: dict[str, tuple[int, int]] = {}
        for node in reversed(nodes):
            out_lo, out_hi = rows[node.outputs[0].name]
            for source in node.inputs:
                if isinstance(source, gs.Constant) or not source.name:
                    continue
                first, end, top, bottom = windows[node.name].needs(out_lo, out_hi, _height(source))
                if rows.setdefault(source.name, (first, end)) != (first, end):
                    raise NotPatchable(f"'{source.name}' is read with two row windows in the stage")
                if _pad_attr(node):
                    pads[node.name] = (top, bottom)
        plan.bands.append(rows)
        plan.pads.append(pads)
        for node in nodes:
            lo_rows, hi_rows = rows[node.outputs[0].name]
            plan.band_macs += node_cost(node).macs * (hi_rows - lo_rows) // _height(node.outputs[0])
    return plan
