"""Channel rules of element-wise ops (residual Add, per-channel Mul ...), of ops that pass channels
through (activations, pooling), and of ops that mix channels (LRN, Softmax over channels, reductions
over channels), which keep their channels."""

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
    scalar_or_missing,
    spaced,
)
from edgec.passes.pruning.groups import FORWARDS, SCALES, Linker


class ElementwiseRule(ChannelRule):
    """Element-wise ops with broadcasting: every operand that spans the output's channel axis holds
    the same channels (a residual Add links both branches, Torch-Pruning#159); a constant operand
    of one value per channel is cut with them; an operand of size 1 on that axis is broadcast."""

    ops: ClassVar[tuple[str, ...]] = (
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Pow",
        "Where",
        "PRelu",
    )

    def link(self, node: gs.Node, linker: Linker) -> None:
        found = spaced(node, linker)
        if not found:
            return
        shape = static_shape(node.outputs[0])
        ranks = [rank(t) for t in node.inputs]
        if shape is None or None in ranks:
            fix_inputs(node, linker, "has operands of unknown shape")
            return
        axes = {space.axis + len(shape) - rank(t) for _, t, space in found}
        blocks = {space.block for _, _, space in found}
        if len(axes) != 1 or len(blocks) != 1:
            fix_inputs(node, linker, "combines channels that lie on different axes")
            return
        axis, block = axes.pop(), blocks.pop()
        size = shape[axis]
        full = [space for _, _, space in found if space.channels * block == size]
        if not full or size % block:
            fix_inputs(node, linker, "broadcasts these channels over another tensor's")
            return
        out = linker.derive(node, node.outputs[0], axis, full[0])
        for tensor, tensor_rank in zip(node.inputs, ranks, strict=True):
            local = axis - (len(shape) - tensor_rank)
            if local < 0 or static_shape(tensor)[local] != size:
                continue  # broadcast over the channels
            if isinstance(tensor, gs.Constant):
                linker.use(node, out, SCALES)
                continue
            space = linker.space(tensor) or linker.operand(node, tensor, local, block)
            linker.same(space, out)
            linker.use(node, space, FORWARDS)

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        out_cut = cuts.get(node.outputs[0])
        if out_cut is None:
            return
        out_rank = len(node.outputs[0].shape)
        size = out_cut.space.channels * out_cut.space.block
        for index, tensor in enumerate(node.inputs):
            values = constant(tensor)
            local = out_cut.space.axis - (out_rank - (values.ndim if values is not None else 0))
            if values is not None and local >= 0 and values.shape[local] == size:
                delete_elements(node, index, out_cut.elements, local, graph)


_UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu",
    "Softplus", "Softsign", "Mish", "Clip", "Identity", "Dropout", "Cast", "Abs", "Neg", "Exp", "Log",
    "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu",
    "Shrink", "QuantizeLinear", "DequantizeLinear",
)  # fmt: skip
_POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


class PassThroughRule(ChannelRule):
    """Activations, casts, dropout, per-tensor (de)quantization and spatial pooling: channel ``i``
    of the output is channel ``i`` of the input; their other operands must be single values."""

    ops: ClassVar[tuple[str, ...]] = _UNARY + _POOLS

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            if spaced(node, linker):
                fix_inputs(node, linker, "takes these channels as a parameter")
            return
        extra_outputs = [
            t for t in node.outputs[1:] if t.name and (t.outputs or linker.graph.is_graph_output(t))
        ]
        if not all(scalar_or_missing(t) for t in node.inputs[1:]):
            reason = "takes a parameter with more than one value (per-channel scales are not followed)"
        elif extra_outputs:
            reason = f"also outputs '{extra_outputs[0].name}', which is read"
        elif node.op in _POOLS and (space.axis != 1 or space.block != 1):
            reason = "pools over the axis these channels lie on"
        else:
            linker.derive(node, node.outputs[0], space.axis, space)
            linker.use(node, space, FORWARDS)
            return
        linker.fix(space, f"{node.op} '{node.name}' {reason}")


class AcrossChannelsRule(ChannelRule):
    """Ops that normalize or reduce over some axes: over the channel axis they mix channels (LRN
    normalizes each channel with its neighbours), so those channels stay; over other axes the
    channels pass through (on a new axis when reduced axes before them are dropped)."""

    ops: ClassVar[tuple[str, ...]] = (
        "LRN", "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "GroupNormalization",
        "MeanVarianceNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
    )  # fmt: skip

    def link(self, node: gs.Node, linker: Linker) -> None:
        space = linker.space(node.inputs[0])
        if space is None:
            return
        tensor_rank = rank(node.inputs[0])
        axes = self._axes(node, tensor_rank, linker.graph.opset)
        if axes is None or space.axis in axes:
            linker.fix(
                space, f"{node.op} '{node.name}' mixes these channels (it normalizes or reduces over them)"
            )
            return
        out_rank = rank(node.outputs[0])
        dropped = (
            sum(1 for a in axes if a < space.axis) if out_rank is not None and out_rank < tensor_rank else 0
        )
        linker.derive(node, node.outputs[0], space.axis - dropped, space)
        linker.use(node, space, FORWARDS)

    @staticmethod
    def _axes(node: gs.Node, tensor_rank: int, opset: int) -> set[int] | None:
        """The axes the node mixes values over, ``None`` when they cannot be told."""
        op, attrs = node.op, node.attrs
        if op in ("LRN", "GroupNormalization"):
            return {1}
        if op == "MeanVarianceNormalization":
            return {a % tensor_rank for a in attrs.get("axes", [0, 2, 3])}
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            axis = int(attrs.get("axis", -1 if opset >= 13 else 1)) % tensor_rank
            # Before opset 13 these ops flatten the axes from ``axis`` on into one.
            return {axis} if opset >= 13 else set(range(axis, tensor_rank))
        if op == "LayerNormalization":
            return set(range(int(attrs.get("axis", -1)) % tensor_rank, tensor_rank))
        if op in ("ArgMax", "ArgMin"):
            return {int(attrs.get("axis", 0)) % tensor_rank}
        axes = attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            values = constant(node.inputs[1])
            if values is None:
                return None
            axes = values.tolist()
        if not axes:
            return set() if attrs.get("noop_with_empty_axes", 0) else set(range(tensor_rank))
        return {int(a) % tensor_rank for a in np.atleast_1d(axes)}


class ShapeReaderRule(ChannelRule):
    """Shape and Size read the channel count at run time: those channels stay."""

    ops: ClassVar[tuple[str, ...]] = ("Shape", "Size")

    def link(self, node: gs.Node, linker: Linker) -> None:
        fix_inputs(node, linker, "reads the channel count at run time (the import path folds such reads)")


ELEMENTWISE_RULES: list[ChannelRule] = [
    ElementwiseRule(),
    PassThroughRule(),
    AcrossChannelsRule(),
    ShapeReaderRule(),
]
