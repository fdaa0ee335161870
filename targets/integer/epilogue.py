"""The requantization epilogue shared by the integer kinds, in Relax and in numpy:
``y = clamp(z_y + MultiplyByQuantizedMultiplier(acc, m, shift), lo, hi)`` as int8.

The node supplies ``y_zero_point``, ``lo``, ``hi`` and ``rounding`` (attributes); ``m`` and
``shift`` are a scalar or one value per channel along ``axis`` (or already an array of the
accumulator's rank, e.g. per output position of an average pool). The Relax form is the shift-only
:func:`~.fixed_point.requantize`, in 32-bit arithmetic where :func:`high_word_shift` allows (single
rounding, multipliers below 0.25, as conv and dense layers usually have); the numpy form is TFLite's
:func:`~.fixed_point.multiply_by_quantized_multiplier`, so a bit-exact match checks both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from edgec.targets.integer.fixed_point import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier

__all__ = [
    "channel_const",
    "clamp",
    "emit_finish",
    "emit_multiply",
    "emit_multiply_high",
    "finish",
    "high_word_shift",
]


def _broadcast(values: Any, rank: int, axis: int) -> np.ndarray:
    """A scalar, an array already of rank ``rank``, or per-channel values laid along ``axis``."""
    values = np.asarray(values, np.int64)
    if values.size == 1:
        return values.reshape(())
    if values.ndim == rank:
        return values
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


# ----- numpy -------------------------------------------------------------------------------------


def finish(acc: np.ndarray, node: gs.Node, axis: int, mult: Any, shift: Any) -> np.ndarray:
    """numpy: ``clamp(z_y + MultiplyByQuantizedMultiplier(acc, m, shift), lo, hi)`` as int8."""
    rank = acc.ndim
    r = multiply_by_quantized_multiplier(
        acc, _broadcast(mult, rank, axis), _broadcast(shift, rank, axis), str(node.attrs["rounding"])
    )
    return np.clip(r + int(node.attrs["y_zero_point"]), int(node.attrs["lo"]), int(node.attrs["hi"])).astype(
        np.int8
    )


# ----- Relax -------------------------------------------------------------------------------------


def channel_const(values: np.ndarray, dtype: str, rank: int, axis: int) -> Any:
    """A Relax constant of per-channel values shaped to broadcast along ``axis``."""
    from tvm import relax

    shape = [1] * rank
    shape[axis] = values.size
    return relax.const(np.asarray(values).astype(dtype).reshape(shape), dtype)


def clamp(x: Any, lo: float, hi: float, dtype: str) -> Any:
    """``min(max(x, lo), hi)``: unlike ``relax.op.clip``, these have layout inference, so the clamp
    stays in the conv's NHWC epilogue instead of costing two layout transposes."""
    from tvm import relax

    return relax.op.minimum(relax.op.maximum(x, relax.const(lo, dtype)), relax.const(hi, dtype))


def emit_multiply(x: Any, mult: Any, shift: Any, rank: int, axis: int, rounding: str) -> Any:
    """Relax ops for ``MultiplyByQuantizedMultiplier(x, m, shift)`` on int64 (shift-only form).

    ``double``: ``x' = sat32(x << left)``, ``h = (x'·m + 2^30) >> 31``,
    ``r = (h + 2^(right-1) - [h<0]) >> right``. ``single``: ``r = (x·m + 2^(30-shift)) >> (31 - shift)``.
    Terms that are zero for every channel are not emitted.
    """
    from tvm import relax

    def const(values: np.ndarray) -> Any:
        shaped = _broadcast(values, rank, axis)
        if shaped.ndim == 0:
            return relax.const(int(shaped), "int64")
        return relax.const(shaped, "int64")

    mult = np.asarray(mult, np.int64)
    shift = np.asarray(shift, np.int64)
    if rounding == "single":
        total = 31 - shift
        product = relax.op.multiply(x, const(mult))
        return relax.op.right_shift(relax.op.add(product, const(np.int64(1) << (total - 1))), const(total))
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    if np.any(left > 0):
        x = clamp(relax.op.left_shift(x, const(left)), INT32_MIN, INT32_MAX, "int64")
    h = relax.op.right_shift(
        relax.op.add(relax.op.multiply(x, const(mult)), const(np.int64(1 << 30))), const(np.int64(31))
    )
    if np.any(right > 0):
        nudge = (np.int64(1) << right) >> 1
        neg = relax.op.astype(relax.op.less(h, relax.const(0, "int64")), "int64")
        if not np.all(right > 0):
            neg = relax.op.multiply(neg, const((right > 0).astype(np.int64)))
        h = relax.op.right_shift(relax.op.subtract(relax.op.add(h, const(nudge)), neg), const(right))
    return h


def high_word_shift(shift: Any, rounding: str) -> np.ndarray | None:
    """``s = -1 - shift`` when the single-rounding multiply can use the high word of a 32x32-bit
    product (every ``shift ≤ -2``, so ``s ≥ 1``; a multiplier below 0.25), else ``None``.

    ``(x·m + 2^(30-shift)) >> (31-shift)`` with ``31 - shift = 32 + s``: adding ``2^(31+s)`` before
    the shift is adding ``2^(s-1)`` to the high word, and floor shifts compose, so
    ``r = (hi32(x·m) + 2^(s-1)) >> s`` exactly: the high word of the product, then an add and a
    shift of 32-bit values instead of a 64-bit rounding add and a 64-bit variable shift (and the
    zero point and clamp in 32 bits too). It needs ``x`` in int32, as the accumulators are.
    """
    right = -1 - np.asarray(shift, np.int64)
    if rounding != "single" or np.any(right < 1):
        return None
    return right


def emit_multiply_high(x: Any, mult: Any, right: np.ndarray, rank: int, axis: int) -> Any:
    """Relax: ``(hi32(x·m) + 2^(s-1)) >> s`` on int32 ``x`` (see :func:`high_word_shift`).

    ``m`` stays an int64 constant: ``FoldConstant`` folds any cast of it into one, so LLVM
    multiplies 64 x 64 bits (``UMULL`` and two ``MLA``) where ``SMULL`` would do.
    """
    from tvm import relax

    def const(values: np.ndarray, dtype: str) -> Any:
        shaped = _broadcast(values, rank, axis)
        return relax.const(int(shaped) if shaped.ndim == 0 else shaped.astype(dtype), dtype)

    product = relax.op.multiply(relax.op.astype(x, "int64"), const(np.asarray(mult, np.int64), "int64"))
    high = relax.op.astype(relax.op.right_shift(product, relax.const(32, "int64")), "int32")
    rounder = (np.int64(1) << right) >> 1
    return relax.op.right_shift(relax.op.add(high, const(rounder, "int32")), const(right, "int32"))


def emit_finish(bb: Any, acc: Any, node: gs.Node, rank: int, axis: int, mult: Any, shift: Any) -> Any:
    """Relax: ``clamp(z_y + MultiplyByQuantizedMultiplier(acc, m, shift), lo, hi)`` → int8, in int32
    when :func:`high_word_shift` allows it and ``acc`` is int32, else in int64."""
    from tvm import relax

    rounding = str(node.attrs["rounding"])
    zero, lo, hi = (int(node.attrs[k]) for k in ("y_zero_point", "lo", "hi"))
    acc = bb.normalize(acc)
    right = high_word_shift(shift, rounding)
    if right is not None and str(acc.ty.dtype) == "int32":
        h, dtype = emit_multiply_high(acc, mult, right, rank, axis), "int32"
    else:
        h, dtype = emit_multiply(relax.op.astype(acc, "int64"), mult, shift, rank, axis, rounding), "int64"
    y = clamp(relax.op.add(h, relax.const(zero, dtype)), lo, hi, dtype)
    return bb.normalize(relax.op.astype(y, "int8"))
