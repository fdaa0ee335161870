"""Exact integer window arithmetic in numpy for the references: padding, convolution, max pool.

Integer convolutions are computed with float64 BLAS on integer-valued operands: every product
``|x·w| ≤ 2^14`` and every sum of at most ``2^38 / 2^14`` of them is an integer below ``2^53``, so
float64 gives the exact int32 result (:func:`check_int32` then checks ``|acc| < 2^31``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgec.errors import EdgecError
from edgec.targets.integer.fixed_point import INT32_MAX, INT32_MIN

__all__ = ["check_int32", "conv_sum", "max_pool", "pad"]


def pad(x: np.ndarray, pads: Sequence[int], value: int) -> np.ndarray:
    """NCHW spatial padding; ONNX ``pads`` order ``(top, left, bottom, right)``."""
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=value)


def conv_sum(
    x: np.ndarray, w: np.ndarray, strides: Sequence[int], dilations: Sequence[int], group: int
) -> np.ndarray:
    """Exact integer NCHW/OIHW convolution (already padded) as int64, via float64 im2col."""
    n, c, _, _ = x.shape
    oc, icg, kh, kw = w.shape
    if c != icg * group:
        raise EdgecError(f"conv channel mismatch: input {c}, weight {icg} x {group} groups")
    window = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    cols = sliding_window_view(x.astype(np.float64), window, axis=(2, 3))
    cols = cols[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    oh, ow = cols.shape[2], cols.shape[3]
    out = np.empty((n, oc, oh, ow), np.int64)
    ocg = oc // group
    for gi in range(group):
        xs = cols[:, gi * icg : (gi + 1) * icg]  # n, icg, oh, ow, kh, kw
        xs = xs.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, icg * kh * kw)
        ws = w[gi * ocg : (gi + 1) * ocg].reshape(ocg, -1).astype(np.float64)
        res = xs @ ws.T  # exact: integer values below 2^53
        out[:, gi * ocg : (gi + 1) * ocg] = res.reshape(n, oh, ow, ocg).transpose(0, 3, 1, 2).astype(np.int64)
    return out


def check_int32(acc: np.ndarray, name: str) -> None:
    """Refuses an accumulator outside int32 (the kernels would overflow)."""
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise EdgecError(f"{name}: the int32 accumulator overflows")


def max_pool(
    x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int], ceil: bool
) -> np.ndarray:
    """ONNX MaxPool of a 2-D (NCHW) input, undilated, padding never selected."""
    lo = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
    h, w = x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3]
    extra = [0, 0]
    if ceil:
        for i, (size, k, s) in enumerate(((h, kernel[0], strides[0]), (w, kernel[1], strides[1]))):
            out = -(-(size - k) // s) + 1
            if (out - 1) * s >= size - pads[i]:  # ONNX: the last window must start inside
                out -= 1
            extra[i] = max(0, (out - 1) * s + k - size)
    padded = np.pad(
        x, ((0, 0), (0, 0), (pads[0], pads[2] + extra[0]), (pads[1], pads[3] + extra[1])), constant_values=lo
    )
    windows = sliding_window_view(padded, tuple(kernel), axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    return windows.max(axis=(4, 5))
