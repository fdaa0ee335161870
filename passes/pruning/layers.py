"""Channel rules of the layers with weights (Conv, ConvTranspose, Gemm, MatMul) and of the
per-channel normalizations (BatchNormalization, InstanceNormalization)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, static_shape
from edgec.passes.pruning.channel_rule import (
    ChannelRule,
    Cuts,
    constant,
    delete_elements,
    fix_inputs,
    rank,
    replace_input,
)
from edgec.passes.pruning.groups import CONSUMES, FILTERS, NORMALIZES, PRODUCES, Linker


def _weight_problem(node: gs.Node, weights: np.ndarray | None) -> str | None:
    if weights is None:
        return "has a non-constant weight (prune before quantizing, with constant float weights)"
    if weights.dtype.kind != "f":
        return f"has {weights.dtype} weights (prune the float model, before quantizing)"
    return None


def _refuse_layer(node: gs.Node, linker: Linker, reason: str, out_axis: int) -> None:
    """The layer's input and output channels all stay."""
    fix_inputs(node, linker, reason)
    shape = static_shape(node.outputs[0])
    if shape is not None and len(shape) > out_axis:
        space = linker.create(node.outputs[0], out_axis % len(shape), shape[out_axis])
        linker.fix(space, f"{node.op} '{node.name}' {reason}")


def _consume(
    node: gs.Node, linker: Linker, tensor: gs.Tensor, axis: int, refusal: str, whole: bool = False
) -> None:
    """The layer reads ``tensor``'s channels as its reduction axis ``axis`` (``whole``: one element
    per channel, no Flatten block); a space on another axis stays, for ``refusal``."""
    space = linker.space(tensor)
    if space is None:
        return
    if space.axis != axis or (whole and space.block != 1):
        linker.fix(space, f"{node.op} '{node.name}' {refusal}")
    else:
        linker.use(node, space, CONSUMES)


def _delete_bias(node: gs.Node, index: int, channels: np.ndarray, graph: EdgeGraph) -> None:
    if len(node.inputs) > index and node.inputs[index].name:
        delete_elements(node, index, channels, -1, graph)


def _cut_group_inputs(weights: np.ndarray, removed: np.ndarray, group: int, per_group: int) -> np.ndarray:
    """Removes input channels from a (grouped) Conv's weights: the filters of group ``g`` read
    input channels ``g*per_group ...``, so each group's filters lose their own group's columns."""
    rows = weights.shape[0] // group
    parts = []
    for index in range(group):
        mine = (
            removed[(removed >= index * per_group) & (removed < (index + 1) * per_group)] - index * per_group
        )
        parts.append(np.delete(weights[index * rows : (index + 1) * rows], mine, axis=1))
    if len({part.shape[1] for part in parts}) != 1:
        raise ValueError("a grouped Conv lost different numbers of input channels per group")
    return np.concatenate(parts, axis=0)


class ConvRule(ChannelRule):
    """Conv: output channels are weight rows; input channels are weight columns. A grouped Conv
    keeps its groups equal: its input and output spaces are balanced, and each group's filters lose
    the columns of that group's removed inputs. A depthwise Conv (more than one group, one input
    channel per group) removes whole groups: its input channel goes with its outputs and ``group``
    shrinks. A Conv with one input channel and one group is an ordinary Conv, not a depthwise one
    (Torch-Pruning#126)."""

    ops: ClassVar[tuple[str, ...]] = ("Conv",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        weights = constant(node.inputs[1])
        out = node.outputs[0]
        problem = _weight_problem(node, weights)
        if problem is not None or static_shape(out) is None:
            _refuse_layer(node, linker, problem or "has an unknown output shape", 1)
            return
        group = int(node.attrs.get("group", 1))
        channels_out, per_group = weights.shape[0], weights.shape[1]
        x_space = linker.space(node.inputs[0])
        if x_space is not None and (x_space.axis != 1 or x_space.block != 1):
            _refuse_layer(node, linker, "reads its input channels on another axis than the channels'", 1)
            return
        if group > 1 and per_group == 1:
            source = x_space or linker.operand(node, node.inputs[0], 1)
            space = linker.create(out, 1, channels_out, origin=False)
            multiplier = channels_out // group
            linker.link(source, np.repeat(np.arange(group), multiplier), space, np.arange(channels_out))
            linker.use(node, space, FILTERS)
            return
        space = linker.create(out, 1, channels_out)
        linker.use(node, space, PRODUCES)
        linker.balance(space, group)
        if x_space is not None:
            linker.use(node, x_space, CONSUMES)
            linker.balance(x_space, group)

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        weights = constant(node.inputs[1])
        group = int(node.attrs.get("group", 1))
        out_cut, in_cut = cuts.get(node.outputs[0]), cuts.get(node.inputs[0])
        removed_out = out_cut.channels if out_cut else np.zeros(0, np.int64)
        if group > 1 and weights.shape[1] == 1:
            # Depthwise: whole groups go (an input channel with its ``multiplier`` filters).
            node.attrs["group"] = group - len(removed_out) // (weights.shape[0] // group)
            new = np.delete(weights, removed_out, axis=0)
        else:
            new = np.delete(weights, removed_out, axis=0)
            if in_cut is not None:
                new = _cut_group_inputs(new, in_cut.channels, group, weights.shape[1])
        replace_input(node, 1, new, graph)
        _delete_bias(node, 2, removed_out, graph)

    def rows(self, node: gs.Node) -> np.ndarray | None:
        weights = constant(node.inputs[1])
        return weights.reshape(weights.shape[0], -1)


class ConvTransposeRule(ChannelRule):
    """ConvTranspose (one group): weights ``[in, out, k...]``; input channels are weight rows,
    output channels weight columns."""

    ops: ClassVar[tuple[str, ...]] = ("ConvTranspose",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        weights = constant(node.inputs[1])
        problem = _weight_problem(node, weights)
        if problem is None and int(node.attrs.get("group", 1)) != 1:
            problem = "is grouped (only one-group ConvTranspose is pruned)"
        if problem is None and static_shape(node.outputs[0]) is None:
            problem = "has an unknown output shape"
        if problem is not None:
            _refuse_layer(node, linker, problem, 1)
            return
        space = linker.create(node.outputs[0], 1, weights.shape[1])
        linker.use(node, space, PRODUCES)
        _consume(node, linker, node.inputs[0], 1, "reads these channels on another axis", whole=True)

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        weights = constant(node.inputs[1])
        out_cut, in_cut = cuts.get(node.outputs[0]), cuts.get(node.inputs[0])
        removed_out = out_cut.channels if out_cut else np.zeros(0, np.int64)
        new = np.delete(weights, removed_out, axis=1)
        if in_cut is not None:
            new = np.delete(new, in_cut.channels, axis=0)
        replace_input(node, 1, new, graph)
        _delete_bias(node, 2, removed_out, graph)

    def rows(self, node: gs.Node) -> np.ndarray | None:
        weights = constant(node.inputs[1])
        return np.moveaxis(weights, 1, 0).reshape(weights.shape[1], -1)


class GemmRule(ChannelRule):
    """Gemm ``A @ B + C`` with a constant ``B``: output features are ``B``'s columns (rows with
    ``transB``); input features are its rows, ``block`` of them per channel after a Flatten."""

    ops: ClassVar[tuple[str, ...]] = ("Gemm",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        weights = constant(node.inputs[1])
        problem = _weight_problem(node, weights)
        if problem is None and node.attrs.get("transA", 0):
            problem = "transposes its input (transA)"
        if (
            problem is None
            and len(node.inputs) > 2
            and node.inputs[2].name
            and constant(node.inputs[2]) is None
        ):
            problem = "adds a computed C"
        shape = static_shape(node.outputs[0])
        if problem is None and shape is None:
            problem = "has an unknown output shape"
        if problem is not None:
            _refuse_layer(node, linker, problem, 1)
            return
        space = linker.create(node.outputs[0], 1, shape[1])
        linker.use(node, space, PRODUCES)
        _consume(node, linker, node.inputs[0], 1, "keeps these channels on its row axis")

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        weights = constant(node.inputs[1])
        transposed = bool(node.attrs.get("transB", 0))
        out_cut, in_cut = cuts.get(node.outputs[0]), cuts.get(node.inputs[0])
        new = weights
        if out_cut is not None:
            new = np.delete(new, out_cut.channels, axis=0 if transposed else 1)
        if in_cut is not None:
            new = np.delete(new, in_cut.elements, axis=1 if transposed else 0)
        replace_input(node, 1, new, graph)
        if out_cut is not None and len(node.inputs) > 2 and node.inputs[2].name:
            bias = constant(node.inputs[2])
            if bias.ndim and bias.shape[-1] == out_cut.space.channels:
                delete_elements(node, 2, out_cut.channels, -1, graph)

    def rows(self, node: gs.Node) -> np.ndarray | None:
        weights = constant(node.inputs[1])
        return weights if node.attrs.get("transB", 0) else weights.T


class MatMulRule(ChannelRule):
    """MatMul ``A @ B`` with a constant ``B [..., K, N]``: output features are ``B``'s last axis;
    ``A``'s last axis (the reduction) reads ``B``'s rows. Two computed operands (attention) keep
    their channels."""

    ops: ClassVar[tuple[str, ...]] = ("MatMul",)

    def link(self, node: gs.Node, linker: Linker) -> None:
        a, b = node.inputs[0], node.inputs[1]
        weights = constant(b)
        shape = static_shape(node.outputs[0])
        if constant(a) is not None or weights is None:
            fix_inputs(node, linker, "multiplies two computed tensors or a constant by a computed one")
            return
        problem = _weight_problem(node, weights)
        if problem is None and (weights.ndim < 2 or shape is None):
            problem = "has a one-dimensional weight or an unknown output shape"
        if problem is not None:
            _refuse_layer(node, linker, problem, -1)
            return
        space = linker.create(node.outputs[0], len(shape) - 1, shape[-1])
        linker.use(node, space, PRODUCES)
        if linker.space(a) is not None:
            _consume(node, linker, a, rank(a) - 1, "keeps these channels on a row axis")

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        new = constant(node.inputs[1])
        out_cut, in_cut = cuts.get(node.outputs[0]), cuts.get(node.inputs[0])
        if out_cut is not None:
            new = np.delete(new, out_cut.channels, axis=-1)
        if in_cut is not None:
            new = np.delete(new, in_cut.elements, axis=-2)
        replace_input(node, 1, new, graph)

    def rows(self, node: gs.Node) -> np.ndarray | None:
        weights = constant(node.inputs[1])
        return np.moveaxis(weights, -1, 0).reshape(weights.shape[-1], -1)


class NormalizationRule(ChannelRule):
    """BatchNormalization (inference) and InstanceNormalization: one constant per channel for each
    of their parameters, cut with the channels."""

    ops: ClassVar[tuple[str, ...]] = ("BatchNormalization", "InstanceNormalization")

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        size = space.channels * space.block
        params = [constant(t) for t in node.inputs[1:]]
        if node.attrs.get("training_mode", 0) or sum(1 for t in node.outputs if t.name) > 1:
            reason = "is in training mode"
        elif space.axis != 1 or (node.op == "InstanceNormalization" and space.block != 1):
            reason = "normalizes these channels on another axis"
        elif any(p is None or p.shape != (size,) for p in params):
            reason = "has parameters that are not one constant per channel"
        else:
            linker.derive(node, node.outputs[0], 1, space)
            linker.use(node, space, NORMALIZES)
            return
        linker.fix(space, f"{node.op} '{node.name}' {reason}")

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        in_cut = cuts.get(node.inputs[0])
        if in_cut is None:
            return
        for index in range(1, len(node.inputs)):
            delete_elements(node, index, in_cut.elements, 0, graph)

    def scale(self, node: gs.Node) -> np.ndarray:
        """The per-channel scale (gamma), for the ``bn-gamma`` criterion."""
        return constant(node.inputs[1])


LAYER_RULES: list[ChannelRule] = [
    ConvRule(),
    ConvTransposeRule(),
    GemmRule(),
    MatMulRule(),
    NormalizationRule(),
]
