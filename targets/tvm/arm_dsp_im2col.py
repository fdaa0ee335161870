"""SMLAD for int8 convolutions whose input channels are not a multiple of 4 (a first layer on a grey
or RGB image), by im2col over the whole ``KH·KW·Cin`` window.

:class:`.arm_dsp.Int8DspConv` makes the input channels its dot-product axis, four per ``SMLAD``
pair; a 3x3 conv with one input channel has a reduction of 1 there and keeps the plain schedule
(byte loads and ``SMLABB``, about 9.4 instructions per MAC on a Cortex-M4 against 1.5 for the
SMLAD layers). CMSIS-NN's ``arm_convolve_s8`` does what this rule does: it copies each output
column's receptive field into a scratch row (im2col), so the dot product runs over
``K = KH·KW·Cin`` contiguous values. Here ``K`` is padded to ``K4``, a multiple of 4, with zero
weights, so every ``SMLAD`` pair is full::

    col[x, k]   = x_padded[h·s + k / (KW·Cin), x·s + k / Cin % KW, k % Cin]   (0 for k ≥ K)
    W'[co, k]   = W[k / (KW·Cin), k / Cin % KW, k % Cin, co]                   (0 for k ≥ K)
    acc[h, x, co] = Σ_k col[x, k] · W'[co, k]      (DOT4 tensorized, 2 columns x 2 channels)

The zero tail adds nothing to the sums, so the kernel stays bit-exact with the plain one. The
column buffer is built per output row (``W_out · K4`` bytes of workspace, 96 B for the digits
CNN's 8x8 first layer), never for the whole image. The weight is stored as ``W'[co, k]`` (built
at build time in numpy, :func:`relayout_constant_weights`), and the kernel zero-extends it to
``K4`` in a ``Co · K4``-byte workspace copy once per call (TVM's ``pad_einsum`` pads every operand
of the block; a function parameter cannot be declared already padded).

Measured on the digits CNN's first layer (8x8x1 -> 16, 3x3) under qemu on a Cortex-M4
(``benchmarks/mcu_cycles.py --kernels``): 86.6 k instructions with the plain schedule, 64.8 k
with this rule, 44.7 k with the 32-bit requantization as well (4.85 per MAC, 44 per output);
CMSIS-NN's ``arm_convolve_wrapper_s8`` on the same layer runs 97.9 k.

Refused (``None``, the plain rules take the kernel): input channels a multiple of 4
(:class:`.arm_dsp.Int8DspConv` takes those), matmuls, an odd number of output channels, and
windows whose padding would waste more than half of the multiply-adds (``K4 > 1.5 · K``:
e.g. 1x1 convs with 1 or 2 input channels), where the plain loop is no worse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from .arm_dsp import DOT4_INTRIN, has_dsp
from .int8_rules import Int8MicroKernelRule, kernel_layouts, loop_extent, match_int8_reduction
from .int8_rules import relayout_constant_weights as _relayout
from .schedule_common import gather_input_copies, row_window, with_row_window

__all__ = [
    "IM2COL_WEIGHT_ATTR",
    "Int8DspIm2colConv",
    "im2col_refusal",
    "im2col_weight",
    "padded_reduction",
    "relayout_constant_weights",
]

IM2COL_WEIGHT_ATTR = "edgec.arm_dsp_im2col_weight"
# HWIO -> O(HWI): the output channel first, the whole window flattened behind it.
_TO_CHANNEL_ROWS = [3, 0, 1, 2]
# Zero weights may pad the window by at most this share of its multiply-adds.
_MAX_PADDING = 0.5


def padded_reduction(window: int) -> int:
    """``K4``: the im2col reduction ``KH·KW·Cin`` rounded up to whole ``SMLAD`` words (4 int8)."""
    return -(-window // 4) * 4


def im2col_refusal(extents: tuple[int, ...], conv: bool) -> str | None:
    """Why the rule refuses a conv2d with loop extents ``n, h, w, co, ry, rx, rc`` (None: it fits)."""
    if not conv:
        return "a matmul: its reduction is already contiguous"
    kh, kw, cin = extents[4:7]
    channels = extents[3]
    if cin % 4 == 0:
        return f"{cin} input channels: the channel-innermost SMLAD rule takes it"
    if channels % 2:
        return f"{channels} output channels: the 2-channel tile needs an even number"
    window = kh * kw * cin
    if padded_reduction(window) > (1 + _MAX_PADDING) * window:
        return f"a {kh}x{kw}x{cin} window pads {window} -> {padded_reduction(window)} multiply-adds"
    return None


class Int8DspIm2colConv(Int8MicroKernelRule):
    """SMLAD schedule for int8 NHWC convs with few input channels (see the module docstring)."""

    def is_target_available(self, target: Target) -> bool:
        return has_dsp(target)

    def _schedule(self, func: tirx.PrimFunc) -> s_tir.Schedule | None:
        probe = s_tir.Schedule(func)
        gather_input_copies(probe)
        found = match_int8_reduction(func, probe)
        if found is None or im2col_refusal(found.extents, found.conv) is not None:
            return None
        _, _, _, _, kh, kw, cin = found.extents
        k4 = padded_reduction(kh * kw * cin)
        sch = s_tir.Schedule(func.with_attr(IM2COL_WEIGHT_ATTR, {found.weight_param: _TO_CHANNEL_ROWS}))
        padding = gather_input_copies(sch)
        main = sch.get_sblock(found.block)
        window = row_window(sch, main)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        epilogue = blocks[[sch.get(b).name_hint for b in blocks].index(found.block) + 1 :]
        if padding is not None:
            # Padding becomes part of the column copy (a zero where the window leaves the image).
            sch.compute_inline(padding)
        # One reduction axis k over the window, in the order the columns and weight rows store it.
        sch.transform_block_layout(
            main, lambda n, h, w, co, ry, rx, rc: (n, h, w, co, (ry * kw + rx) * cin + rc)
        )
        sch.transform_layout(main, found.weight, lambda ry, rx, rc, co: (co, (ry * kw + rx) * cin + rc))
        data = next(i for i, r in enumerate(sch.get(main).reads) if r.source.name != found.weight)
        columns = sch.reindex(main, ("read", data))
        sch.pad_einsum(main, [1, 1, 1, 1, k4])
        sch.compute_inline(columns)
        column_rows = [b for b in sch.get_producers(main) if sch.get(b).reads[0].source.name != found.weight]
        n, h, w, co, k = sch.get_loops(main)
        width = loop_extent(sch, w) or 1
        wo, wi = sch.split(w, [None, 2 if width % 2 == 0 else 1])
        coo, coi = sch.split(co, [None, 2])
        ko, ki = sch.split(k, [None, 4])
        sch.reorder(n, h, coo, wo, ko, wi, coi, ki)
        for block in column_rows:
            sch.compute_at(block, h)  # one output row's columns at a time
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], wo)
        sch.decompose_reduction(main, ko)
        sch.tensorize(ki, DOT4_INTRIN)
        sch.unroll(wi)
        sch.unroll(coi)
        return with_row_window(sch, window)


def im2col_weight(func: Any) -> dict[int, list[int]]:
    """``{parameter index: axis permutation}`` of a kernel :class:`Int8DspIm2colConv` scheduled."""
    return kernel_layouts(func, IM2COL_WEIGHT_ATTR)


def _channel_rows(weight: np.ndarray, permutation: list[int]) -> np.ndarray:
    """HWIO -> ``W'[co, k]``: transposed, then the window flattened."""
    return np.transpose(weight, permutation).reshape(weight.shape[permutation[0]], -1)


def relayout_constant_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Stores the constant weights of :class:`Int8DspIm2colConv` kernels as ``W'[co, k]``."""
    return _relayout(mod, IM2COL_WEIGHT_ATTR, _channel_rows, "SMLAD im2col")
