"""Channel rules of the ops that move, join or part channels: Concat (channel offsets), Split and
Slice on the channel axis, Reshape/Flatten/Squeeze/Unsqueeze (the channel axis followed through
the new shape; a channel shuffle), Transpose, Pad and Resize."""

from __future__ import annotations

from math import prod
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, static_shape
from edgec.passes.pruning.channel_rule import (
    ChannelRule,
    Cuts,
    constant,
    fix_inputs,
    rank,
    replace_input,
    spaced,
)
from edgec.passes.pruning.groups import COUNTS, FORWARDS, Linker, Space


class ConcatRule(ChannelRule):
    """Concat on the channel axis: output channel ``offset_k + i`` is channel ``i`` of input ``k``
    (each input keeps its own group: Torch-Pruning#481); on another axis every input holds the
    same channels."""

    ops: ClassVar[tuple[str, ...]] = ("Concat",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        found = spaced(node, linker)
        shapes = [static_shape(t) for t in node.inputs]
        if not found:
            return
        if any(s is None for s in shapes) or len({s.axis for _, _, s in found}) != 1:
            fix_inputs(node, linker, "joins channels of unknown shape or on different axes")
            return
        first = found[0][2]
        axis = int(node.attrs["axis"]) % len(shapes[0])
        if axis != first.axis:
            out = linker.derive(node, node.outputs[0], first.axis, first)
            for tensor in node.inputs:
                linker.same(
                    linker.space(tensor) or linker.operand(node, tensor, first.axis, first.block), out
                )
                linker.use(node, linker.space(tensor), FORWARDS)
            return
        block = first.block
        if len({s.block for _, _, s in found}) != 1 or any(shape[axis] % block for shape in shapes):
            fix_inputs(node, linker, "joins channels of different sizes (flattened by different amounts)")
            return
        parts = [linker.space(t) or linker.operand(node, t, axis, block) for t in node.inputs]
        out = linker.create(node.outputs[0], axis, sum(p.channels for p in parts), block, origin=False)
        offset = 0
        for part in parts:
            linker.link(part, np.arange(part.channels), out, offset + np.arange(part.channels))
            linker.use(node, part, FORWARDS)
            offset += part.channels


class SplitRule(ChannelRule):
    """Split on the channel axis: output ``k`` holds a range of the input's channels, and its size
    (the ``split`` input or attribute) shrinks with them; on another axis every output holds all."""

    ops: ClassVar[tuple[str, ...]] = ("Split",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        sizes = [static_shape(t) for t in node.outputs]
        if any(s is None for s in sizes) or (
            len(node.inputs) > 1 and node.inputs[1].name and constant(node.inputs[1]) is None
        ):
            linker.fix(space, f"Split '{node.name}' has outputs of unknown or computed sizes")
            return
        axis = int(node.attrs.get("axis", 0)) % rank(node.inputs[0])
        if axis != space.axis:
            for tensor in node.outputs:
                linker.derive(node, tensor, space.axis, space)
            linker.use(node, space, FORWARDS)
            return
        if any(shape[axis] % space.block for shape in sizes):
            linker.fix(space, f"Split '{node.name}' splits inside a channel's block")
            return
        offset = 0
        for tensor, shape in zip(node.outputs, sizes, strict=True):
            count = shape[axis] // space.block
            part = linker.create(tensor, axis, count, space.block, origin=False)
            linker.link(space, offset + np.arange(count), part, np.arange(count))
            offset += count
        linker.use(node, space, COUNTS)

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        in_cut = cuts.get(node.inputs[0])
        axis = int(node.attrs.get("axis", 0)) % len(node.inputs[0].shape)
        if in_cut is None or axis != in_cut.space.axis:
            return
        sizes = []
        for tensor in node.outputs:
            out_cut = cuts.get(tensor)
            sizes.append(out_cut.kept * out_cut.space.block if out_cut else static_shape(tensor)[axis])
        node.attrs.pop("num_outputs", None)
        if graph.opset < 13:
            node.attrs["split"] = sizes
            return
        values = np.asarray(sizes, dtype=np.int64)
        if len(node.inputs) > 1 and node.inputs[1].name:
            replace_input(node, 1, values, graph)
        else:
            node.inputs[1:] = [graph.add_constant(f"{node.name}_split", values)]


def _slice_bounds(node: gs.Node, opset: int) -> tuple[list, ...] | None:
    """``(starts, ends, axes, steps)`` of a Slice, ``None`` when one is computed at run time."""
    if opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        return list(starts), list(ends), list(node.attrs.get("axes", range(len(starts)))), [1] * len(starts)
    values = []
    for index in range(1, 5):
        tensor = node.inputs[index] if len(node.inputs) > index else None
        if tensor is None or not tensor.name:
            values.append(None)
            continue
        array = constant(tensor)
        if array is None:
            return None
        values.append(array.tolist())
    starts, ends, axes, steps = values
    return starts, ends, axes if axes is not None else list(range(len(starts))), steps or [1] * len(starts)


def _clamp(bound: int, size: int) -> int:
    return min(max(bound + size if bound < 0 else bound, 0), size)


class SliceRule(ChannelRule):
    """Slice with step 1 on the channel axis: output channel ``i`` is input channel ``start + i``;
    both bounds move down by the removed channels before them."""

    ops: ClassVar[tuple[str, ...]] = ("Slice",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        bounds = _slice_bounds(node, linker.graph.opset)
        if bounds is None:
            linker.fix(space, f"Slice '{node.name}' computes its bounds at run time")
            return
        starts, ends, axes, steps = bounds
        axes = [a % rank(node.inputs[0]) for a in axes]
        if space.axis not in axes:
            linker.derive(node, node.outputs[0], space.axis, space)
            linker.use(node, space, FORWARDS)
            return
        index = axes.index(space.axis)
        size = space.channels * space.block
        start, end = _clamp(starts[index], size), _clamp(ends[index], size)
        if steps[index] != 1 or start % space.block or end % space.block or end <= start:
            linker.fix(space, f"Slice '{node.name}' takes these channels with a step or inside a block")
            return
        count = (end - start) // space.block
        out = linker.create(node.outputs[0], space.axis, count, space.block, origin=False)
        linker.link(space, start // space.block + np.arange(count), out, np.arange(count))
        linker.use(node, space, COUNTS)

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        in_cut = cuts.get(node.inputs[0])
        if in_cut is None:
            return
        starts, ends, axes, _ = _slice_bounds(node, graph.opset)
        axes = [a % len(node.inputs[0].shape) for a in axes]
        if in_cut.space.axis not in axes:
            return
        index = axes.index(in_cut.space.axis)
        size = in_cut.space.channels * in_cut.space.block
        start, end = _clamp(starts[index], size), _clamp(ends[index], size)
        starts[index], ends[index] = start - in_cut.below(start), end - in_cut.below(end)
        if graph.opset < 10:
            node.attrs["starts"], node.attrs["ends"] = starts, ends
            return
        replace_input(node, 1, np.asarray(starts, dtype=constant(node.inputs[1]).dtype), graph)
        replace_input(node, 2, np.asarray(ends, dtype=constant(node.inputs[2]).dtype), graph)


def follow_reshape(
    shape: tuple[int, ...], space: Space, new_shape: tuple[int, ...]
) -> tuple[int, int] | None:
    """Where the channels of ``space`` land when a tensor of ``shape`` is reshaped to ``new_shape``:
    ``(axis, block)`` if every channel stays a run of ``block`` consecutive elements of one axis
    (Flatten merges the spatial axes into the channel's block; Unsqueeze moves the axis), else
    ``None`` (a reshape that parts a channel over several axes, as a channel shuffle does)."""
    leading = prod(shape[: space.axis])
    # Elements of one channel for one index of the leading axes, row-major.
    chunk = space.block * prod(shape[space.axis + 1 :])
    before = 1
    for axis, size in enumerate(new_shape):
        if before == leading:
            trailing = prod(new_shape[axis + 1 :])
            if chunk % trailing == 0 and size * trailing == space.channels * chunk:
                return axis, chunk // trailing
        before *= size
        if before > leading:
            return None
    return None


def _shuffle(node: gs.Node, space: Space, linker: Linker) -> bool:
    """Links a channel shuffle: Reshape ``[.., C, ..] → [.., p, q, ..]``, Transpose of those two
    axes, Reshape back. Input channel ``i*q + j`` becomes output channel ``j*p + i``. Channel ``j``
    of every one of the ``p`` parts goes together: the shuffle then keeps its shape and the kept
    channels their order (removing different ``j`` per part would reorder the output)."""
    shape, axis = static_shape(node.inputs[0]), space.axis
    parted = static_shape(node.outputs[0])
    if space.block != 1 or parted is None or len(parted) != len(shape) + 1:
        return False
    p, q = parted[axis], parted[axis + 1]
    if parted[:axis] != shape[:axis] or parted[axis + 2 :] != shape[axis + 1 :] or p * q != space.channels:
        return False
    transpose = _only_consumer(node.outputs[0], linker, "Transpose")
    perm = list(range(len(parted)))
    perm[axis], perm[axis + 1] = axis + 1, axis
    if transpose is None or list(transpose.attrs.get("perm", [])) != perm:
        return False
    back = _only_consumer(transpose.outputs[0], linker, "Reshape")
    if back is None or static_shape(back.outputs[0]) != shape or constant(back.inputs[1]) is None:
        return False
    out = linker.create(back.outputs[0], axis, space.channels, origin=False)
    part, index = np.divmod(np.arange(space.channels), q)
    linker.link(space, np.arange(space.channels), out, index * p + part)
    for other in range(1, p):
        linker.link(space, np.arange(q), space, other * q + np.arange(q))
    linker.use(node, space, COUNTS)
    linker.use(back, out, COUNTS)
    return True


def _only_consumer(tensor: gs.Tensor, linker: Linker, op: str) -> gs.Node | None:
    if len(tensor.outputs) != 1 or linker.graph.is_graph_output(tensor) or tensor.outputs[0].op != op:
        return None
    return tensor.outputs[0]


class ReshapeRule(ChannelRule):
    """Reshape, Flatten, Squeeze, Unsqueeze: the channels follow the new shape (a Flatten before a
    Gemm makes each channel a block of spatial positions); a Reshape's constant shape is updated.
    A channel shuffle (Reshape, Transpose, Reshape) is followed as a whole."""

    ops: ClassVar[tuple[str, ...]] = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        shape, new_shape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        target = constant(node.inputs[1]) if node.op == "Reshape" else None
        if shape is None or new_shape is None or (node.op == "Reshape" and target is None):
            linker.fix(space, f"{node.op} '{node.name}' has a shape known only at run time")
            return
        landed = follow_reshape(shape, space, new_shape)
        if landed is None:
            if node.op != "Reshape" or not _shuffle(node, space, linker):
                linker.fix(space, f"{node.op} '{node.name}' parts these channels over several axes")
            return
        axis, block = landed
        if target is not None and target[axis] == 0 and axis != space.axis:
            linker.fix(space, f"Reshape '{node.name}' copies a dimension onto these channels' axis")
            return
        out = linker.create(node.outputs[0], axis, space.channels, block, origin=False)
        linker.same(space, out)
        linker.use(node, space, COUNTS if node.op == "Reshape" else FORWARDS)

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        if node.op != "Reshape":
            return
        target = constant(node.inputs[1]).copy()
        out_cut, in_cut = cuts.get(node.outputs[0]), cuts.get(node.inputs[0])
        if out_cut is not None:
            axis, size = out_cut.space.axis, out_cut.kept * out_cut.space.block
        elif in_cut is not None:
            # The first Reshape of a channel shuffle: [.., p, q, ..] with q shrinking.
            axis = in_cut.space.axis + 1
            size = in_cut.kept // static_shape(node.outputs[0])[in_cut.space.axis]
        else:
            return
        if target[axis] > 0:
            target[axis] = size
            replace_input(node, 1, target, graph)


class TransposeRule(ChannelRule):
    """Transpose moves the channel axis to where ``perm`` puts it."""

    ops: ClassVar[tuple[str, ...]] = ("Transpose",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        perm = list(node.attrs.get("perm", reversed(range(rank(node.inputs[0])))))
        linker.derive(node, node.outputs[0], perm.index(space.axis), space)
        linker.use(node, space, FORWARDS)


class PadRule(ChannelRule):
    """Pad passes channels through when it pads other axes only."""

    ops: ClassVar[tuple[str, ...]] = ("Pad",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        tensor_rank = rank(node.inputs[0])
        pads = node.attrs.get("pads") if linker.graph.opset < 11 else constant(node.inputs[1])
        axes = (
            constant(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else range(tensor_rank)
        )
        if pads is None or axes is None:
            linker.fix(space, f"Pad '{node.name}' computes its padding at run time")
            return
        pads, axes = list(np.ravel(pads)), [int(a) % tensor_rank for a in axes]
        if space.axis in axes:
            index = axes.index(space.axis)
            if pads[index] or pads[index + len(axes)]:
                linker.fix(space, f"Pad '{node.name}' pads the channel axis")
                return
        linker.derive(node, node.outputs[0], space.axis, space)
        linker.use(node, space, FORWARDS)


class ResizeRule(ChannelRule):
    """Resize and Upsample with scale 1 on the channel axis pass channels through; explicit
    output ``sizes`` count the channels and are updated."""

    ops: ClassVar[tuple[str, ...]] = ("Resize", "Upsample")

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        tensor_rank = rank(node.inputs[0])
        axes = [int(a) % tensor_rank for a in node.attrs.get("axes", range(tensor_rank))]
        operands = [t for t in node.inputs[1:] if t.name]
        if any(constant(t) is None for t in operands):
            linker.fix(space, f"{node.op} '{node.name}' computes its output size at run time")
            return
        if space.axis in axes:
            index = axes.index(space.axis)
            scales = self._operand(node, "scales")
            if scales is not None and scales[index] != 1:
                linker.fix(space, f"{node.op} '{node.name}' resizes the channel axis")
                return
        linker.derive(node, node.outputs[0], space.axis, space)
        role = COUNTS if self._operand(node, "sizes") is not None else FORWARDS
        linker.use(node, space, role)

    @staticmethod
    def _operand(node: gs.Node, which: str) -> np.ndarray | None:
        if node.op == "Upsample":
            found = node.attrs.get("scales") or (constant(node.inputs[1]) if len(node.inputs) > 1 else None)
            return np.asarray(found) if which == "scales" and found is not None else None
        index = {"scales": 2, "sizes": 3}[which]
        values = (
            constant(node.inputs[index]) if len(node.inputs) > index and node.inputs[index].name else None
        )
        return values if values is not None and values.size else None

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        out_cut = cuts.get(node.outputs[0])
        sizes = self._operand(node, "sizes")
        if out_cut is None or sizes is None:
            return
        tensor_rank = len(node.outputs[0].shape)
        axes = [int(a) % tensor_rank for a in node.attrs.get("axes", range(tensor_rank))]
        if out_cut.space.axis in axes:
            sizes = sizes.copy()
            sizes[axes.index(out_cut.space.axis)] = out_cut.kept * out_cut.space.block
            replace_input(node, 3, sizes, graph)


RESHAPING_RULES: list[ChannelRule] = [
    ConcatRule(),
    SplitRule(),
    SliceRule(),
    ReshapeRule(),
    TransposeRule(),
    PadRule(),
    ResizeRule(),
]
