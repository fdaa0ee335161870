"""Fixed-point arithmetic of the integer kernels: TFLite/CMSIS-NN requantization.

A real multiplier ``M`` (``s_x · s_w / s_y`` for a convolution) is an int32 mantissa ``m`` and a
power of two (:func:`quantize_multiplier`), and ``MultiplyByQuantizedMultiplier(x, m, shift)``
has two forms. ``rounding="double"`` is TFLite's default build (TFLite Micro, CMSIS-NN)::

    M = q · 2^e, q ∈ [0.5, 1)  (frexp);  m = round(q · 2^31)  (if m = 2^31: m = 2^30, e += 1)
    left = max(e, 0), right = max(-e, 0)
    x'   = saturate_int32(x · 2^left)
    h    = SaturatingRoundingDoublingHighMul(x', m)  =  (x' · m + 2^30) >> 31         (int64, floor)
    r    = RoundingDivideByPOT(h, right)             =  (h + 2^(right-1) - [h < 0]) >> right   (right > 0)

``h`` rounds ``x'·m / 2^31`` to nearest with ties toward +∞ (TFLite writes it with a sign-dependent
nudge and a truncating division, which is the same integer), and ``r`` rounds ``h / 2^right`` to
nearest with ties away from zero. ``rounding="single"``, edgec's default (``Target.requantize_rounding``,
``edgec compile --rounding``), is TFLite's ``TFLITE_SINGLE_ROUNDING`` (CMSIS-NN's
``CMSIS_NN_USE_SINGLE_ROUNDING``) form, ``r = (x · m + 2^(30-e)) >> (31 - e)``: one rounding, ties
toward +∞, closer to exact; the first rounding of the double form is off by one step on ~0.06 % of
values and that compounds over deep networks (resnet50, inception_v1 in ``tests/targets/test_integer.py``).

:func:`requantize` is the shift-only form the kernels emit; :func:`multiply_by_quantized_multiplier`
writes TFLite's formulas literally (nudge, truncating division, mask and threshold), so that a
bit-exact match between the kernels and the numpy reference also checks these identities.
"""

from __future__ import annotations

import math

import numpy as np

from edgec.errors import EdgecError

__all__ = [
    "INT8_MAX",
    "INT8_MIN",
    "INT32_MAX",
    "INT32_MIN",
    "ROUNDINGS",
    "multiply_by_quantized_multiplier",
    "quantize_multiplier",
    "requantize",
]

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ROUNDINGS = ("single", "double")


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``QuantizeMultiplier``: a real multiplier as an int32 mantissa and a power of two.

    ``real = m · 2^(shift - 31)`` with ``m = round(q · 2^31)`` for ``real = q · 2^shift``,
    ``q ∈ [0.5, 1)`` (``math.frexp``); ``round`` is half away from zero (C ``std::round``); when
    rounding gives ``2^31``, ``m = 2^30`` and ``shift + 1``. A zero multiplier gives ``m = 0``.
    Shifts below -31 flush the multiplier to zero, as in TFLite.

    Args:
        real: One non-negative multiplier or an array of them (computed in float64).

    Returns:
        ``(m, shift)`` as int64 arrays of the same shape as ``real``.
    """
    values = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise EdgecError(f"requantization multipliers must be finite and non-negative, got {values}")
    mult = np.zeros(values.shape, np.int64)
    shift = np.zeros(values.shape, np.int64)
    for i, value in np.ndenumerate(values):
        if value == 0.0:
            continue
        q, e = math.frexp(float(value))
        m = math.floor(q * 2**31 + 0.5)  # q > 0: half away from zero (C std::round)
        if m == 2**31:
            m //= 2
            e += 1
        if e < -31:
            m, e = 0, 0
        if e > 30:
            raise EdgecError(f"requantization multiplier {value} is too large for int32 fixed point")
        mult[i], shift[i] = m, e
    shape = np.shape(real)
    return mult.reshape(shape), shift.reshape(shape)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, rounding: str = "single") -> np.ndarray:
    """``MultiplyByQuantizedMultiplier(acc, m, shift)`` in the shift-only form used by the kernels.

    ``double``: ``x' = saturate_int32(acc · 2^max(shift,0))``, ``h = (x'·m + 2^30) >> 31``,
    ``r = (h + 2^(right-1) - [h<0]) >> right`` with ``right = max(-shift, 0)`` (``r = h`` when
    ``right = 0``). ``single``: ``r = (acc·m + 2^(30-shift)) >> (31 - shift)``, one rounding, ties
    toward +∞. All shifts are arithmetic (floor); ``mult`` and ``shift`` broadcast.

    Args:
        acc: int32 accumulators (any integer dtype; computed in int64).
        mult: int32 mantissas from :func:`quantize_multiplier`.
        shift: Their exponents.
        rounding: ``double`` or ``single``.

    Returns:
        The rounded products as int64 (callers add the zero point and clamp).
    """
    x = acc.astype(np.int64)
    mult = np.asarray(mult, np.int64)
    shift = np.asarray(shift, np.int64)
    if rounding == "single":
        total = 31 - shift
        return (x * mult + (np.int64(1) << (total - 1))) >> total
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.clip(x << left, INT32_MIN, INT32_MAX)
    h = (x * mult + (1 << 30)) >> 31
    nudge = (np.int64(1) << right) >> 1
    neg = ((h < 0) & (right > 0)).astype(np.int64)
    return (h + nudge - neg) >> right


def _saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: ``(a·b + nudge) / 2^31`` truncated,
    ``nudge = 2^30`` if ``a·b ≥ 0`` else ``1 - 2^30``; saturates only for ``a = b = INT32_MIN``."""
    ab = a.astype(np.int64) * b.astype(np.int64)
    v = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    q = np.where(v >= 0, v // (1 << 31), -((-v) // (1 << 31)))  # C++ division truncates toward 0
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def _rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``(x >> e) + (remainder > threshold)``, with
    ``mask = 2^e - 1``, ``remainder = x & mask``, ``threshold = (mask >> 1) + (x < 0)``."""
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> exponent) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(
    x: np.ndarray, mult: np.ndarray, shift: np.ndarray, rounding: str = "single"
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(x, m, shift)``, vectorised (the reference's form).

    ``double`` (default build): ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x · 2^left, m),
    right)`` with ``left = max(shift, 0)``, ``right = max(-shift, 0)``; ``x · 2^left`` saturates to
    int32 (TFLite leaves the overflow undefined). ``single`` (``TFLITE_SINGLE_ROUNDING``):
    ``(x·m + 2^(total-1)) >> total`` with ``total = 31 - shift``.
    """
    shift = np.asarray(shift, np.int64)
    if rounding == "single":
        total = 31 - shift
        rounder = np.int64(1) << (total - 1)
        return (x.astype(np.int64) * np.asarray(mult, np.int64) + rounder) >> total
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = np.clip(x.astype(np.int64) * (np.int64(1) << left), INT32_MIN, INT32_MAX)
    return _rounding_divide_by_pot(_saturating_rounding_doubling_high_mul(scaled, np.asarray(mult)), right)
