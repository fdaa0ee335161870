"""Default (untuned) CPU schedules for the TIR functions of a lowered Relax module.

TVM 0.27 ships no x86 or Arm CPU schedules: ``tvm.compile`` emits naive loop nests, which run a
CNN 60-200x slower than onnxruntime. These rules close most of that gap in well under a second of
compile time, with no tuning:

* :class:`Conv2dNHWC` — register-tiled NHWC/HWIO conv2d (plus its fused bias/BN/ReLU/residual
  epilogue): a ``w`` x ``oc`` tile of accumulators stays in vector registers while the reduction
  streams the input (broadcast) and the HWIO weights (contiguous vector loads).
* :class:`GroupedConv2dNHWC` — the same tiles for a grouped conv2d, within a group's channels.
* :class:`Matmul` — row-major ``x @ W`` (Gemm/MatMul with constant weights): vectorised over
  the output columns, parallel over column blocks.
* :class:`.softmax_schedule.SoftmaxOverOuterAxis` — a softmax over an axis that is not the
  innermost (YOLO's DFL), which dlight's ``Reduction`` gets quadratically wrong.
* dlight's ``GEMV`` and ``Reduction`` (softmax, norms).
* :class:`ParallelVectorize` — anything else (pooling, elementwise, layout transposes):
  inline elementwise chains, parallelise the outer loops, vectorise the innermost spatial loop.

A conv2d/matmul kernel may start with a packed weight's decode blocks (:mod:`.weight_fusion`
fused them in): :func:`apply_default_cpu_schedules` first inlines them into the reduction
(:func:`.weight_fusion.inline_weight_decode`), so every rule sees a plain conv2d/matmul that reads
the packed bytes, and the float weight never exists as a buffer.

Each rule returns ``None`` (so the next rule is tried) when the function does not match or when
any schedule primitive refuses, which is how odd shapes fall back instead of failing the build.
"""

from __future__ import annotations

import dataclasses
import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .schedule_common import (
    COMM_REDUCE,
    DATA_PAR,
    MIN_PARALLEL_ELEMENTS,
    SCHEDULE_ERRORS,
    CpuRule,
    CpuVectorInfo,
    cpu_vector_info,
    extent,
    inline_spatial_chain,
    iter_types,
    root_blocks,
    vectorize_tail,
)
from .softmax_schedule import SoftmaxOverOuterAxis
from .tiled_schedules import Conv2dNHWC, DepthwiseConv2dNHWC, DepthwiseConvRows, GroupedConv2dNHWC, Matmul

__all__ = [
    "Conv2dNHWC",
    "CpuVectorInfo",
    "DepthwiseConv2dNHWC",
    "GroupedConv2dNHWC",
    "Matmul",
    "ParallelVectorize",
    "apply_default_cpu_schedules",
    "cpu_vector_info",
    "default_rules",
    "fixed_rules",
    "float_rules",
]


class ParallelVectorize(CpuRule):
    """Fallback for everything else: parallel outer loops, vectorised inner spatial loop.

    Elementwise blocks are inlined first. For a block with reduction loops (pooling, means over
    H and W in NHWC) the last spatial loop, usually channels, is moved inside the reduction so
    it can be vectorised.
    """

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = root_blocks(sch)
        if not blocks:
            return None
        inline_spatial_chain(sch, blocks[:-1])
        changed = False
        for block in root_blocks(sch):
            changed |= self._schedule_block(sch, block)
        return sch if changed else None

    def _schedule_block(self, sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
        loops = sch.get_loops(block)
        kinds = iter_types(sch, block)
        if not loops or len(loops) != len(kinds):
            return False  # not a plain loop-per-axis nest
        extents = [extent(sch, lp) for lp in loops]
        if any(e is None for e in extents):
            return False
        spatial = [lp for lp, t in zip(loops, kinds, strict=True) if t == DATA_PAR]
        reduce = [lp for lp, t in zip(loops, kinds, strict=True) if t == COMM_REDUCE]
        if len(spatial) + len(reduce) != len(loops) or not spatial:
            return False
        if kinds != sorted(kinds):
            return False  # reduction loops interleaved with spatial ones: leave it alone
        work = math.prod(e for e, t in zip(extents, kinds, strict=True) if t == DATA_PAR)
        inner = spatial[-1]
        inner_ext = extent(sch, inner)
        # The widest native vector that divides the innermost loop (136 channels: 8 lanes), not
        # only full-width ones: odd channel counts were left scalar.
        lanes = self.vector_width(inner_ext) if inner_ext is not None else 1
        vectorize = lanes >= min(4, self.info.lanes)
        if len(spatial) == 1 and not reduce and vectorize:
            # A flat elementwise loop: vector chunks inside, parallel chunks outside.
            outer, inner = sch.split(inner, [None, lanes])
            if work >= MIN_PARALLEL_ELEMENTS:
                sch.parallel(outer)
            sch.vectorize(inner)
            return True
        vectorize = vectorize and len(spatial) > 1
        if reduce and vectorize:
            sch.reorder(*spatial[:-1], *reduce, inner)
        head = spatial[:-1] if vectorize else spatial
        outer = sch.fuse(*head) if len(head) > 1 else head[0]
        if work >= MIN_PARALLEL_ELEMENTS:
            sch.parallel(outer)
        if vectorize:
            vectorize_tail(sch, inner, lanes)
            if reduce:
                # After vectorize: the other order fails ("not compact dataflow"), and the pool
                # was left unscheduled.
                sch.decompose_reduction(block, reduce[0])
        return True


class _Reduction(dlight.cpu.Reduction):
    """dlight's CPU reduction rule, minus the case it gets quadratically wrong.

    In TVM 0.27 it parallelises over the *output's* spatial axis and computes the reductions
    under it; when the reduction itself has no spatial extent (softmax over a (1, 1000) row)
    that recomputes the max and the sum once per output element: 3 ms instead of microseconds.
    Those functions are left to :class:`ParallelVectorize`.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            sch = s_tir.Schedule(func)
            for block in root_blocks(sch):
                ivs = sch.get(block).iter_vars
                if any(int(iv.iter_type) == COMM_REDUCE for iv in ivs):
                    spatial = [iv.dom.extent for iv in ivs if int(iv.iter_type) == DATA_PAR]
                    if all(isinstance(e, tirx.IntImm) and int(e) == 1 for e in spatial):
                        return None
        except SCHEDULE_ERRORS:
            return None
        return super().apply(func, target, tunable)


class _Gemv(dlight.cpu.GEMV):
    """dlight's CPU GEMV rule, declining (``None``) where TVM 0.27's ``normalize`` asserts instead:
    an element-wise chain fused with a reduction that has no spatial loop left (the requantization
    of a sparse conv's accumulator fused with a global average pool's sum)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        try:
            return super().apply(func, target, tunable)
        except AssertionError:
            return None


_IEEE_FLOAT_BITS = {"float16": 16, "float32": 32, "float64": 64}


def float_lanes(info: CpuVectorInfo, func: tirx.PrimFunc) -> int:
    """Vector lanes for ``func``: ``info.lanes`` float32 lanes scaled to the narrowest float type
    its blocks compute (write), twice as many for float16; ``info.lanes`` when none is float.

    Written, not read, buffers decide: an int8 or float32 kernel that only reads a float16
    scale still computes with float32 vectors.
    """
    try:
        sch = s_tir.Schedule(func)
        written = [region.source.dtype for block in root_blocks(sch) for region in sch.get(block).writes]
    except SCHEDULE_ERRORS:
        return info.lanes  # not a plain block nest: the rules will decline it anyway
    bits = [_IEEE_FLOAT_BITS.get(str(dtype), 32) for dtype in written]
    return info.lanes * 32 // min(bits, default=32)


class _LanesByDtype(ScheduleRule):
    """Applies a vectorising rule with the lanes of the function's float type (:func:`float_lanes`).

    A float16 kernel tiled for the float32 lane count fills half of every vector register: the
    float16 digits CNN took 1.8x (Cortex-M55) and 1.45x (Cortex-A55) the instructions per
    inference of the same kernels tiled for 8 lanes.
    """

    def __init__(self, rule: type[ScheduleRule], info: CpuVectorInfo) -> None:
        self.rule, self.info = rule, info
        self._rules: dict[int, ScheduleRule] = {}

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        lanes = float_lanes(self.info, func)
        if lanes not in self._rules:
            self._rules[lanes] = self.rule(dataclasses.replace(self.info, lanes=lanes))
        return self._rules[lanes].apply(func, target, tunable)


def fixed_rules(target: Target, micro_kernels: bool = True, memory_first: bool = False) -> list[ScheduleRule]:
    """The rules of the hand-written kernels, which tuning leaves alone, in priority order: the
    fused conv + pool ones first (``memory_first``), the sparse kernels', then the int8
    micro-kernels' (VMLADAVA on Cortex-M55, SMLAD on Cortex-M4/M7/M55 with an im2col one for few
    input channels, vpdpbusd on x86 with VNNI, vpmaddwd on x86 AVX2, sdot on AArch64 with the
    dot-product extension, smull + sadalp on every AArch64 core), if ``micro_kernels``; each
    declines what it cannot take."""
    from .arm_dsp import Int8DspConv, has_dsp
    from .arm_dsp_im2col import Int8DspIm2colConv
    from .arm_mve import Int8MveConv, has_mve
    from .arm_neon import Int8NeonConv, has_dotprod, is_aarch64
    from .fused_schedules import ConvPool
    from .sparse_schedule import SparseRows
    from .x86_int8 import Int8PmaddwdConv, has_avx2
    from .x86_vnni import Int8VnniConv, vnni_lanes

    # Fused conv + pool: Helium, then SMLAD, then plain loops (each rule checks its target).
    fused: list[ScheduleRule] = (
        [ConvPool(Int8MveConv()), ConvPool(Int8DspConv()), ConvPool(None)] if memory_first else []
    )
    if not micro_kernels:
        return [*fused[2:], SparseRows()]
    if target.kind.name == "c":
        return [*fused, SparseRows()]
    lanes = vnni_lanes(target)
    return [
        *fused,
        SparseRows(),
        # Helium first; what it declines (reductions not a multiple of 16) still gets SMLAD.
        *([Int8MveConv()] if has_mve(target) else []),
        *([Int8DspConv(), Int8DspIm2colConv()] if has_dsp(target) else []),
        # VNNI first; what it declines (reductions not a multiple of 4) still gets vpmaddwd.
        *([Int8VnniConv(lanes)] if lanes else []),
        *([Int8PmaddwdConv()] if has_avx2(target) else []),
        # sdot first; what it declines (reductions not a multiple of 4) still gets sadalp.
        *([Int8NeonConv("sdot-lane"), Int8NeonConv("sdot")] if has_dotprod(target) else []),
        *([Int8NeonConv("sadalp")] if is_aarch64(target) else []),
    ]


def float_rules(target: Target, memory_first: bool = False) -> list[ScheduleRule]:
    """The register-tiled and fallback CPU rules, in priority order. Target ``c`` (portable C)
    gets none but, ``memory_first``, :class:`.fused_schedules.PerElement`: its kernels are TVM's
    loops."""
    from .fused_schedules import PerElement

    if target.kind.name == "c":
        return [PerElement()] if memory_first else []
    info = cpu_vector_info(target)
    # Memory-first: a depthwise conv whose merged padding would otherwise be a bounds test per MAC.
    rows: list[ScheduleRule] = [_LanesByDtype(DepthwiseConvRows, info)] if memory_first else []
    return [
        _LanesByDtype(Conv2dNHWC, info),
        *rows,
        _LanesByDtype(DepthwiseConv2dNHWC, info),
        _LanesByDtype(GroupedConv2dNHWC, info),
        _LanesByDtype(Matmul, info),
        _LanesByDtype(SoftmaxOverOuterAxis, info),
        _Gemv(),
        _Reduction(),
        _LanesByDtype(ParallelVectorize, info),
    ]


def default_rules(
    target: Target, micro_kernels: bool = True, memory_first: bool = False
) -> list[ScheduleRule]:
    """The CPU rules in priority order for ``target``: :func:`fixed_rules`, then :func:`float_rules`."""
    return [*fixed_rules(target, micro_kernels, memory_first), *float_rules(target, memory_first)]


def apply_default_cpu_schedules(
    target: Target, micro_kernels: bool = True, memory_first: bool = False
) -> tvm.transform.Pass:
    """A module pass that schedules every not-yet-scheduled PrimFunc with :func:`default_rules`.

    Run it inside ``with target:`` (or on functions carrying a ``target`` attribute), after the
    Relax zero pipeline has fused and legalized the module. Packed-weight decode blocks are
    inlined into their conv2d/matmul first (:func:`.weight_fusion.inline_weight_decode`).

    Args:
        target: The CPU target the rules are parameterised for.
        micro_kernels: include the int8 micro-kernel rule (see :func:`default_rules`).
        memory_first: include the fused conv + pool rules (see :func:`default_rules`).

    Returns:
        The pass; scheduled functions get the ``tirx.is_scheduled`` attribute.
    """
    from .weight_fusion import inline_weight_decode

    rules = default_rules(target, micro_kernels, memory_first)
    return tvm.transform.Sequential([inline_weight_decode(), dlight.ApplyDefaultSchedule(*rules)])
