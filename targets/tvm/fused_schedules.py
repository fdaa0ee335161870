"""The schedule of a fused conv + pool kernel: pooled pixel by pooled pixel, so that only the conv
outputs one pooled pixel reads exist, in a few registers and a buffer of ``k·k·C`` bytes.

:func:`.fused_kernels.outline_fused_kernels` makes ``conv → requantize → pool`` one PrimFunc; as
legalized, its blocks are the input copies (``pad_temp``, a merged zero-point padding), the conv
reduction, the elementwise requantization into the int8 pre-pool tensor ``y``, the pool (a
``pool_max`` reduction, or an average pool's window-sum convolution and its epilogue). Every one of
them writes a whole tensor. :class:`ConvPool` moves the conv and ``y`` under the pool's output
column loop (``compute_at``): for each pooled pixel ``(ph, pw)`` the ``k x k`` conv outputs it reads
are computed, requantized and pooled, from a copy of the padded input window they read. With
the Arm DSP extension the conv part is tiled and tensorized exactly as
:class:`.arm_dsp.Int8DspConv` does a plain conv (two output columns by two output channels,
``SMLAD`` on four input channels; the pool window's ``k`` columns are the column tile), with the
weight stored input channel innermost; with Helium (Cortex-M55) the same with ``VMLADAVA`` on 16
input channels (:class:`.arm_mve.Int8MveConv`); without either (Cortex-M3, portable C) the loops
stay plain, the requantization of each conv output right after its reduction.

The arithmetic is the legalized blocks', only their order changes: the kernel is bit-exact with
the unfused pair. A fused kernel the rule cannot schedule is an error
(:func:`check_fused_kernels_scheduled`): unscheduled, its buffers would be whole tensors in the
arena, the memory the fusion was for.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from edgec.errors import EdgecError

from .arm_dsp import Int8DspConv
from .int8_rules import is_int8_mac, loop_extent
from .schedule_common import (
    DATA_PAR,
    SCHEDULE_ERRORS,
    gather_input_copies,
    inline_spatial_chain,
    is_spatial,
    iter_types,
    root_blocks,
)

__all__ = ["ConvPool", "PerElement", "check_fused_kernels_scheduled", "fused_conv_pool_blocks"]

_TILE_CHANNELS = 2  # output channels per SMLAD tile, as Int8DspConv


def fused_conv_pool_blocks(sch: s_tir.Schedule) -> tuple[int, int] | None:
    """Indices (among the root blocks) of the conv and the pool reduction of a fused conv + pool
    kernel, ``None`` for any other kernel."""
    blocks = root_blocks(sch)
    reductions = [i for i, block in enumerate(blocks) if not is_spatial(sch, block)]
    if len(reductions) != 2:
        return None
    conv, pool = reductions
    names = [sch.get(block).name_hint for block in blocks]
    if not names[conv].startswith("conv2d_nhwc") or not (
        names[pool].startswith("pool") or "conv2d" in names[pool]
    ):
        return None
    return conv, pool


def _dsp_weight(
    func: tirx.PrimFunc, sch: s_tir.Schedule, conv: s_tir.SBlockRV, lanes: int
) -> tuple[str, int] | None:
    """The weight buffer and parameter of the conv when it fits the micro-kernel tile (input
    channels a multiple of ``lanes``), else ``None``."""
    stmt = sch.get(conv)
    loads = is_int8_mac(stmt.body)
    if loads is None or str(stmt.body.buffer.dtype) != "int32":
        return None
    weight = loads[1]
    params = [i for i, p in enumerate(func.params) if p.name == weight.source.name]
    out_channels, in_channels = (int(weight.source.shape[d]) for d in (3, 2))
    if (
        len(params) != 1
        or len(weight.source.shape) != 4
        or in_channels % lanes
        or out_channels % _TILE_CHANNELS
    ):
        return None
    return weight.source.name, params[0]


class ConvPool(ScheduleRule):
    """Fused conv + pool kernels, pooled pixel by pooled pixel (module docstring); ``dot`` is the
    micro-kernel rule whose intrinsic, lanes and weight layout the conv part takes (None: plain)."""

    def __init__(self, dot: Int8DspConv | None) -> None:
        self.dot = dot

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name in ("llvm", "c") and (
            self.dot is None or self.dot.is_target_available(target)
        )

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        found = fused_conv_pool_blocks(s_tir.Schedule(func))
        if found is None:
            return None
        conv_index, _ = found
        probe = s_tir.Schedule(func)
        dot = self.dot
        weight = _dsp_weight(func, probe, root_blocks(probe)[conv_index], dot.lanes) if dot else None
        if dot and weight is None:
            return None  # the plain ConvPool rule, next in line, takes it
        if dot and weight is not None:
            func = func.with_attr(dot.weight_attr, {weight[1]: [0, 1, 3, 2]})
        try:
            return self._schedule(s_tir.Schedule(func), found, weight, dot)
        except SCHEDULE_ERRORS:
            return None  # the plain rule takes it, else check_fused_kernels_scheduled reports it

    @staticmethod
    def _schedule(
        sch: s_tir.Schedule, found: tuple[int, int], weight: tuple[str, int] | None, dot: Int8DspConv | None
    ) -> s_tir.Schedule:
        blocks = root_blocks(sch)
        conv_index, pool_index = found
        conv, pool = blocks[conv_index], blocks[pool_index]
        requantize, epilogue = blocks[conv_index + 1 : pool_index], blocks[pool_index + 1 :]
        padding = gather_input_copies(sch)
        for block in requantize[:-1] + epilogue[:-1]:
            sch.compute_inline(block)
        y = requantize[-1]
        pooled_column = sch.get_loops(pool)[2]
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], pooled_column)
        sch.compute_at(y, pooled_column)
        sch.compute_at(conv, pooled_column)
        if padding is not None:
            # The padded input window of one pooled pixel ((k + kh - 1)^2 · C bytes, on the stack):
            # copying the overlap of neighbouring windows twice costs little next to their MACs.
            sch.compute_at(padding, pooled_column)
        rows, columns, channels, ry, rx, rc = sch.get_loops(conv)[-6:]
        if weight is None or dot is None:
            sch.reverse_compute_at(y, channels)
            sch.decompose_reduction(conv, ry)
            return sch
        coo, coi = sch.split(channels, [None, _TILE_CHANNELS])
        rco, rci = sch.split(rc, [None, dot.lanes])
        sch.reorder(rows, coo, ry, rx, rco, columns, coi, rci)
        sch.reverse_compute_at(y, coo)
        sch.transform_layout(conv, weight[0], lambda *idx: (*idx[:-2], idx[-1], idx[-2]))
        sch.decompose_reduction(conv, ry)
        sch.tensorize(rci, dot.intrinsic)
        if (loop_extent(sch, columns) or 0) <= 4:
            sch.unroll(columns)
        sch.unroll(coi)
        return sch


def check_fused_kernels_scheduled(mod: Any) -> None:
    """Raises when a fused conv + pool kernel of ``mod`` was left unscheduled.

    Raises:
        EdgecError: naming the kernel.
    """
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
            continue
        if fused_conv_pool_blocks(s_tir.Schedule(func)) is not None:
            raise EdgecError(
                f"the fused conv + pool kernel {gv.name_hint} could not be scheduled pooled pixel by "
                "pooled pixel; compile with --no-memory-planning to build it unfused"
            )


class PerElement(ScheduleRule):
    """Portable C's plain loops without whole intermediates: every element-wise block inlined into
    its consumer (or producer) and each reduction's epilogue computed per output element.

    Target ``c`` gets no performance schedule (TVM emits its loops as they are legalized), and
    unscheduled, a kernel holds every intermediate of its fused chain whole (a conv's int32
    accumulators, each step of the requantization in int64, the padded input): workspaces in the
    arena several times the size of the tensors. Inlined, the arithmetic is the same per element.
    A kernel this cannot schedule (a reduction read by two blocks) is left as it is.
    """

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "c"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            sch = s_tir.Schedule(func)
            inline_spatial_chain(sch, root_blocks(sch)[:-1])
            for block in root_blocks(sch):
                kinds = iter_types(sch, block)
                consumers = sch.get_consumers(block)
                if all(kind == DATA_PAR for kind in kinds) or len(consumers) != 1:
                    continue
                spatial = [
                    loop for loop, kind in zip(sch.get_loops(block), kinds, strict=False) if kind == DATA_PAR
                ]
                if spatial:
                    sch.reverse_compute_at(consumers[0], spatial[-1])
            return sch
        except SCHEDULE_ERRORS:
            return None
