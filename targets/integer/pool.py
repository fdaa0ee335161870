"""Integer average pooling (``AveragePool`` 2-D, ``GlobalAveragePool`` of any spatial rank).

``acc = Σ_window q - K·z_x`` (padding by ``z_x``, ``K`` the window size) is ``Σ_in-bounds (q - z_x)``;
then, when input and output share scale and zero point, TFLite/CMSIS-NN's integer average pool
``clamp(z_y + round_half_away(acc / N), lo, hi)``, otherwise one requantization
``clamp(z_y + requantize(acc, M), lo, hi)`` with ``M = s_x / (s_y · N)``. ``N`` is the divisor:
``K`` (``count_include_pad`` or no padding), the spatial size (global), or the in-bounds count at
each output position when padding is excluded; it needs the input shape, so the plan computes it
(and ``M``) and stores them as constants of shape ``()`` or ``(1, 1, OH, OW)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, static_shape
from edgec.targets.integer import qdq
from edgec.targets.integer.arith import conv_sum, pad
from edgec.targets.integer.epilogue import clamp, emit_finish, finish
from edgec.targets.integer.fixed_point import quantize_multiplier
from edgec.targets.integer.kind import IntegerKind, attr_int
from edgec.targets.integer.qdq import Group, Refuse

__all__ = ["IntegerAveragePool", "pool_divisor"]

_AUTO_PAD_OK = ("NOTSET", "VALID", b"NOTSET", b"VALID")


def pool_divisor(
    shape: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    exclude: bool,
) -> tuple[int, np.ndarray]:
    """``(K, N)``: the window size and the divisor per output position (shape ``()`` or
    ``(1, 1, OH, OW)`` when padding is excluded from the count)."""
    if not kernel:  # global
        window = int(np.prod(shape[2:]))
        return window, np.asarray(window, np.int64)
    kh, kw = kernel
    window = kh * kw
    if not exclude:
        return window, np.asarray(window, np.int64)
    top, left, bottom, right = pads
    rows = np.zeros(shape[2] + top + bottom, np.int64)
    rows[top : top + shape[2]] = 1
    cols = np.zeros(shape[3] + left + right, np.int64)
    cols[left : left + shape[3]] = 1
    row_counts = np.convolve(rows, np.ones(kh, np.int64), "valid")[:: strides[0]]
    col_counts = np.convolve(cols, np.ones(kw, np.int64), "valid")[:: strides[1]]
    return window, np.outer(row_counts, col_counts)[None, None]


class IntegerAveragePool(IntegerKind):
    """int8 average pool: an int32 window sum, then a rounding division or a requantization."""

    op_type: ClassVar[str] = "IntegerAveragePool"
    float_ops: ClassVar[tuple[str, ...]] = ("AveragePool", "GlobalAveragePool")
    kernel: ClassVar[str] = "integer average pool"
    constants: ClassVar[tuple[str, ...]] = ("divisor", "multiplier", "shift")

    def refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        if node.op == "GlobalAveragePool":
            return None
        if len(node.attrs.get("kernel_shape", ())) != 2:
            return "only 2-D AveragePool has an integer kernel"
        if node.attrs.get("ceil_mode", 0):
            return "AveragePool with ceil_mode has no integer kernel"
        if node.attrs.get("auto_pad", "NOTSET") not in _AUTO_PAD_OK:
            return "AveragePool with auto_pad has no integer kernel (give explicit pads)"
        if tuple(node.attrs.get("dilations", (1, 1))) != (1, 1):
            return "a dilated AveragePool has no integer kernel"
        return None

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        node = group.node
        reason = self.refusal(node, graph)
        if reason:
            raise Refuse(f"{qdq.label(node)}: {reason}")
        x = qdq.activation(node.inputs[0])
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) < 3:
            raise Refuse(f"{qdq.label(node)} input shape is not static (the divisor depends on it)")
        kernel: tuple[int, ...] = ()
        strides: tuple[int, ...] = ()
        pads: tuple[int, ...] = (0, 0, 0, 0)
        exclude = False
        if node.op == "AveragePool":
            kernel = tuple(int(k) for k in node.attrs["kernel_shape"])
            strides = tuple(int(s) for s in node.attrs.get("strides", (1, 1)))
            pads = tuple(int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
            exclude = bool(any(pads) and not node.attrs.get("count_include_pad", 0))
        window, counts = pool_divisor(shape, kernel, strides, pads, exclude)
        mult, shift = quantize_multiplier(x.scale / (group.scale * counts.astype(np.float64)))
        lo, hi = qdq.clamp_bounds(group.act, group.scale, group.zero_point)
        divide = bool(np.float32(x.scale) == np.float32(group.scale) and x.zero_point == group.zero_point)
        attrs: dict[str, Any] = {
            "window": window, "divide": int(divide), "x_zero_point": x.zero_point,
            "y_zero_point": group.zero_point, "lo": lo, "hi": hi, "rounding": group.rounding,
        }  # fmt: skip
        if kernel:  # a global pool has no window attributes (it sums every spatial axis)
            attrs.update(kernel_shape=list(kernel), strides=list(strides), pads=list(pads))
        constants = {
            "divisor": counts.astype(np.int32),
            "multiplier": mult.astype(np.int32),
            "shift": shift.astype(np.int32),
        }
        return [self.make(graph, node.name, node.op, [x.tensor], group.output, attrs, constants)]

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        x = bb.normalize(args[0])
        rank, channels = len(x.ty.shape), int(x.ty.shape[1])
        kernel = [int(k) for k in node.attrs.get("kernel_shape", ())]
        zx = attr_int(node, "x_zero_point")
        if not kernel:
            total = relax.op.sum(relax.op.astype(x, "int32"), axis=list(range(2, rank)), keepdims=True)
        else:
            pads = [int(p) for p in node.attrs["pads"]]
            if any(pads):
                x = relax.op.nn.pad(x, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]], pad_value=zx)
            ones = np.ones((channels, 1, *kernel), np.int8)
            strides = [int(s) for s in node.attrs["strides"]]
            total = relax.op.nn.conv2d(
                x, relax.const(ones, "int8"), strides=strides, groups=channels, out_dtype="int32"
            )
        acc = relax.op.subtract(total, relax.const(attr_int(node, "window") * zx, "int32"))
        counts = self.constant(node, "divisor")
        if not attr_int(node, "divide"):
            mult, shift = self.constant(node, "multiplier"), self.constant(node, "shift")
            return emit_finish(bb, acc, node, rank, 1, mult, shift)
        # round_half_away(acc / N) = sign(acc) · ((|acc| + N // 2) // N)
        n = relax.const(counts.astype(np.int32), "int32")
        half = relax.const((counts // 2).astype(np.int32), "int32")
        magnitude = relax.op.floor_divide(relax.op.add(relax.op.abs(acc), half), n)
        rounded = relax.op.where(
            relax.op.less(acc, relax.const(0, "int32")), relax.op.negative(magnitude), magnitude
        )
        y = relax.op.add(rounded, relax.const(attr_int(node, "y_zero_point"), "int32"))
        y = clamp(y, attr_int(node, "lo"), attr_int(node, "hi"), "int32")
        return bb.normalize(relax.op.astype(y, "int8"))

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        x = args[0]
        kernel = [int(k) for k in node.attrs.get("kernel_shape", ())]
        zx = attr_int(node, "x_zero_point")
        if not kernel:
            total = x.astype(np.int64).sum(axis=tuple(range(2, x.ndim)), keepdims=True)
        else:
            padded = pad(x, node.attrs["pads"], zx)
            ones = np.ones((x.shape[1], 1, *kernel), np.int8)
            total = conv_sum(padded, ones, node.attrs["strides"], (1, 1), x.shape[1])
        acc = total - attr_int(node, "window") * zx
        counts = self.constant(node, "divisor").astype(np.int64)
        if not attr_int(node, "divide"):
            return finish(acc, node, 1, self.constant(node, "multiplier"), self.constant(node, "shift"))
        # TFLite: acc > 0 ? (acc + N/2) / N : (acc - N/2) / N, with C division (toward zero)
        half = counts // 2
        quotient = np.where(acc > 0, (acc + half) // counts, -((-(acc - half)) // counts))
        y = quotient + attr_int(node, "y_zero_point")
        return np.clip(y, attr_int(node, "lo"), attr_int(node, "hi")).astype(np.int8)
