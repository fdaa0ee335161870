"""Integer ``Add`` and ``Mul`` of two int8 operands (activations or per-tensor int8 constants),
with numpy broadcasting.

``Add`` is TFLite's int8 add: both operands are brought to a common scale ``2·max(s_a, s_b)`` with
20 bits of headroom, summed, and requantized::

    a' = requantize((q_a - z_a) << 20, s_a / (2·max)),   b' likewise
    y  = clamp(z_y + requantize(a' + b', 2·max / (2^20 · s_y)), lo, hi)

``Mul`` is TFLite's int8 mul (hard-swish and squeeze-and-excitation blocks stay int8)::

    y  = clamp(z_y + requantize((q_a - z_a) · (q_b - z_b), s_a · s_b / s_y), lo, hi)

(``|(q_a - z_a)(q_b - z_b)| ≤ 255²`` fits int32.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.targets.integer import qdq
from edgec.targets.integer.epilogue import emit_finish, emit_multiply, finish
from edgec.targets.integer.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier
from edgec.targets.integer.kind import IntegerKind, attr_int
from edgec.targets.integer.qdq import Group

__all__ = ["ADD_LEFT_SHIFT", "IntegerAdd", "IntegerMul"]

# TFLite's left shift for the inputs of a quantized Add (int8): headroom for the rescaled sum.
ADD_LEFT_SHIFT = 20


def _operands(group: Group, graph: EdgeGraph) -> tuple[list[gs.Tensor], list[float], list[int]]:
    """The two int8 operands of a binary group (constants become int8 constant inputs), their
    scales and zero points."""
    data: list[gs.Tensor] = []
    scales: list[float] = []
    zeros: list[int] = []
    for index, tensor in enumerate(group.node.inputs[:2]):
        constant = qdq.constant_operand(tensor)
        if constant is not None:
            values, scale, zero = constant
            data.append(graph.add_constant(f"{group.node.name}_operand{index}", values.astype(np.int8)))
        else:
            operand = qdq.activation(tensor)
            data.append(operand.tensor)
            scale, zero = operand.scale, operand.zero_point
        scales.append(scale)
        zeros.append(zero)
    return data, scales, zeros


def _scalar(mult: np.ndarray, shift: np.ndarray) -> tuple[int, int]:
    return int(mult.reshape(())), int(shift.reshape(()))


def _epilogue_attrs(group: Group) -> dict[str, Any]:
    lo, hi = qdq.clamp_bounds(group.act, group.scale, group.zero_point)
    return {"y_zero_point": group.zero_point, "lo": lo, "hi": hi, "rounding": group.rounding}


class IntegerAdd(IntegerKind):
    """TFLite's int8 add of two operands at different scales, with a fused clamp."""

    op_type: ClassVar[str] = "IntegerAdd"
    float_ops: ClassVar[tuple[str, ...]] = ("Add",)
    kernel: ClassVar[str] = "integer add"
    data_inputs: ClassVar[int] = 2

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        data, scales, zeros = _operands(group, graph)
        twice_max = 2.0 * max(scales)
        a_mult, a_shift = _scalar(*quantize_multiplier(scales[0] / twice_max))
        b_mult, b_shift = _scalar(*quantize_multiplier(scales[1] / twice_max))
        mult, shift = _scalar(*quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * group.scale)))
        attrs = {
            "a_zero_point": zeros[0], "b_zero_point": zeros[1],
            "a_multiplier": a_mult, "a_shift": a_shift, "b_multiplier": b_mult, "b_shift": b_shift,
            "multiplier": mult, "shift": shift, **_epilogue_attrs(group),
        }  # fmt: skip
        node = group.node
        return [self.make(graph, node.name, node.op, data, group.output, attrs)]

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        terms = []
        for side, operand in zip("ab", args, strict=True):
            centred = relax.op.subtract(
                relax.op.astype(operand, "int64"), relax.const(attr_int(node, f"{side}_zero_point"), "int64")
            )
            shifted = relax.op.left_shift(centred, relax.const(ADD_LEFT_SHIFT, "int64"))
            mult, shift = attr_int(node, f"{side}_multiplier"), attr_int(node, f"{side}_shift")
            terms.append(emit_multiply(shifted, mult, shift, 0, 0, str(node.attrs["rounding"])))
        total = bb.normalize(relax.op.add(terms[0], terms[1]))
        rank = len(total.ty.shape)
        return emit_finish(
            bb, total, node, rank, rank - 1, attr_int(node, "multiplier"), attr_int(node, "shift")
        )

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        terms = []
        for side, operand in zip("ab", args, strict=True):
            shifted = (operand.astype(np.int64) - attr_int(node, f"{side}_zero_point")) * (
                1 << ADD_LEFT_SHIFT
            )
            mult = np.asarray(attr_int(node, f"{side}_multiplier"))
            shift = np.asarray(attr_int(node, f"{side}_shift"))
            terms.append(multiply_by_quantized_multiplier(shifted, mult, shift, str(node.attrs["rounding"])))
        total = terms[0] + terms[1]
        return finish(total, node, total.ndim - 1, attr_int(node, "multiplier"), attr_int(node, "shift"))


class IntegerMul(IntegerKind):
    """TFLite's int8 mul: the centred product requantized once, with a fused clamp."""

    op_type: ClassVar[str] = "IntegerMul"
    float_ops: ClassVar[tuple[str, ...]] = ("Mul",)
    kernel: ClassVar[str] = "integer mul"
    data_inputs: ClassVar[int] = 2

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        data, scales, zeros = _operands(group, graph)
        mult, shift = _scalar(*quantize_multiplier(np.float64(scales[0]) * scales[1] / group.scale))
        attrs = {
            "a_zero_point": zeros[0],
            "b_zero_point": zeros[1],
            "multiplier": mult,
            "shift": shift,
            **_epilogue_attrs(group),
        }
        node = group.node
        return [self.make(graph, node.name, node.op, data, group.output, attrs)]

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        centred = [
            relax.op.subtract(
                relax.op.astype(operand, "int32"), relax.const(attr_int(node, f"{side}_zero_point"), "int32")
            )
            for side, operand in zip("ab", args, strict=True)
        ]
        product = bb.normalize(relax.op.multiply(centred[0], centred[1]))
        rank = len(product.ty.shape)
        return emit_finish(
            bb, product, node, rank, rank - 1, attr_int(node, "multiplier"), attr_int(node, "shift")
        )

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        a, b = (
            operand.astype(np.int64) - attr_int(node, f"{side}_zero_point")
            for side, operand in zip("ab", args, strict=True)
        )
        product = a * b
        return finish(product, node, product.ndim - 1, attr_int(node, "multiplier"), attr_int(node, "shift"))
