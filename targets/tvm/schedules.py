"""Default (untuned) CPU schedules for the TIR functions of a lowered Relax module.

TVM 0.27 ships no x86 or Arm CPU schedules: ``tvm.compile`` emits naive loop nests, which run a
CNN 60-200x slower than onnxruntime. These rules close most of that gap in well under a second of
compile time, with no tuning:

* :class:`Conv2dNHWC` — register-tiled NHWC/HWIO conv2d (plus its fused bias/BN/ReLU/residual
  epilogue): a ``w`` x ``oc`` tile of accumulators stays in vector registers while the reduction
  streams the input (broadcast) and the HWIO weights (contiguous vector loads).
* :class:`Matmul` — row-major ``x @ W`` (Gemm/MatMul with constant weights): vectorised over
  the output columns, parallel over column blocks.
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

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

__all__ = [
    "Conv2dNHWC",
    "CpuVectorInfo",
    "Matmul",
    "ParallelVectorize",
    "apply_default_cpu_schedules",
    "cpu_vector_info",
]

# A parallel loop costs a thread-pool launch (a few microseconds); below this many output
# elements a kernel is faster on one core.
_MIN_PARALLEL_ELEMENTS = 4096

# TVM 0.27 has no tvm.TVMError: FFI errors arrive as RuntimeError subclasses (ScheduleError,
# InternalError) or as ValueError/TypeError/IndexError.
_SCHEDULE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)

_DATA_PAR = 0  # tirx.IterVar.DataPar
_COMM_REDUCE = 2  # tirx.IterVar.CommReduce


@dataclasses.dataclass(frozen=True)
class CpuVectorInfo:
    """What the register-tiled schedules need to know about a CPU.

    Attributes:
        lanes: fp32 lanes per vector register.
        registers: Architectural vector registers.
        max_accumulators: Cap on accumulator registers in a conv/matmul tile; the rest hold
            the weight vectors and the broadcast input.
    """

    lanes: int
    registers: int
    max_accumulators: int


def cpu_vector_info(target: Target) -> CpuVectorInfo:
    """Vector width and register budget of an ``llvm`` target.

    Args:
        target: The TVM target (``mtriple``/``mcpu``/``mattr`` decide the features).

    Returns:
        AVX-512: 16 lanes, 32 registers; AVX/AVX2: 8 lanes, 16 registers; AArch64 NEON:
        4 lanes, 32 registers; anything else: 4 lanes, 16 registers (SSE-like).
    """
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "") or "")
    if triple.startswith(("aarch64", "arm64")):
        return CpuVectorInfo(lanes=4, registers=32, max_accumulators=24)
    if triple.startswith(("arm", "thumb")):
        return CpuVectorInfo(lanes=4, registers=16, max_accumulators=12)
    with target:
        # llvm_get_vector_width reports 512 for haswell in TVM 0.27, so ask for features.
        if codegen.target_has_features("avx512f", target):
            return CpuVectorInfo(lanes=16, registers=32, max_accumulators=24)
        if codegen.target_has_features("avx", target):
            return CpuVectorInfo(lanes=8, registers=16, max_accumulators=13)
    return CpuVectorInfo(lanes=4, registers=16, max_accumulators=12)


def _extent(sch: s_tir.Schedule, loop: s_tir.LoopRV) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _root_blocks(sch: s_tir.Schedule) -> list[s_tir.SBlockRV]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _iter_types(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_spatial(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    return all(t == _DATA_PAR for t in _iter_types(sch, block))


def _inline_spatial_chain(sch: s_tir.Schedule, blocks: Sequence[s_tir.SBlockRV]) -> None:
    """Inline elementwise blocks into their consumers (or producers), where TVM allows it."""
    for block in blocks:
        if not _is_spatial(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except _SCHEDULE_ERRORS:
            with contextlib.suppress(*_SCHEDULE_ERRORS):
                sch.reverse_compute_inline(block)


def _vectorize_tail(sch: s_tir.Schedule, loop: s_tir.LoopRV, lanes: int) -> None:
    """Vectorise ``loop`` in chunks of ``lanes`` when its extent is a multiple of it."""
    ext = _extent(sch, loop)
    if ext is None or ext < lanes or ext % lanes:
        return
    if ext == lanes:
        sch.vectorize(loop)
        return
    _, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)


class Conv2dNHWC(ScheduleRule):
    """Register-tiled NHWC/HWIO conv2d with its elementwise epilogue fused in."""

    def __init__(self, info: CpuVectorInfo) -> None:
        self.info = info

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def pick_tiles(self, width: int, out_channels: int) -> tuple[int, int]:
        """The (output columns, output channels) register tile for a conv layer.

        Maximises the tile area (FMAs per loaded value) such that the accumulators, one
        register per weight vector and one for the broadcast input fit in the register file,
        and the tile divides the layer exactly (no tail loops: a tail would stop LLVM from
        keeping the accumulators in registers). W=13 with 64 channels, say, gives 13 x 16
        rather than 1 x 64.

        Args:
            width: Output width (W).
            out_channels: Output channels (CO).

        Returns:
            ``(wi, oci)``: columns and channels per tile.
        """
        lanes, regs = self.info.lanes, self.info.registers
        # Channel tiles: divisors of CO up to 8 vectors (1000 classes -> 8, 40, 125 ...; LLVM
        # splits a 40-lane vector into 16+16+8). A tile must divide CO: a tail would put a
        # predicate inside the unrolled tile.
        candidates = [c for c in range(1, 8 * lanes + 1) if out_channels % c == 0]
        # A power-of-two number of whole vectors when CO allows: LLVM scalarises tiles of 1.5, 2.5
        # or 3 vectors (24, 40, 48 lanes), which made pruned layers of 48 or 80 channels ~50x
        # slower than 64.
        whole = [c for c in candidates if c % lanes == 0 and (c // lanes) & (c // lanes - 1) == 0]
        candidates = whole or candidates
        best: tuple[tuple[int, int, int], int, int] | None = None
        for oc in candidates:
            vecs = math.ceil(oc / lanes)
            budget = min(self.info.max_accumulators, regs - vecs - 1)
            for wi in range(1, min(width, 16) + 1):
                if width % wi or wi * vecs > budget:
                    continue
                # Most accumulators first (each weight vector is reused wi times and each
                # broadcast input vecs times), then the most columns: weight reuse matters most,
                # since late layers stream megabytes of weights (W=13, CO=1000: 13x8 runs 4x
                # faster than 1x125).
                key = (wi * vecs, wi, oc)
                if best is None or key > best[0]:
                    best = (key, wi, oc)
        if best is None:
            return 1, 1
        return best[1], best[2]

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            return self._schedule(sch)
        except _SCHEDULE_ERRORS:
            return None  # a primitive refused (odd shape or epilogue): leave it to later rules

    def _schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = _root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        convs = [i for i, n in enumerate(names) if n.startswith("conv2d_nhwc")]
        if len(convs) != 1:
            return None
        ci = convs[0]
        conv = blocks[ci]
        if _iter_types(sch, conv) != [_DATA_PAR] * 4 + [_COMM_REDUCE] * 3:
            return None
        producers, epilogue = blocks[:ci], blocks[ci + 1 :]
        if not all(sch.get(b).name_hint.startswith("pad_temp") for b in producers):
            return None
        if not all(_is_spatial(sch, b) for b in epilogue):
            return None
        loops = sch.get_loops(conv)
        if len(loops) != 7:
            return None
        n, h, w, co, rh, rw, rc = loops
        width, out_channels = _extent(sch, w), _extent(sch, co)
        if width is None or out_channels is None:
            return None
        # bias -> BN scale/shift -> residual add -> ReLU: one block, computed per tile.
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        wi, oci = self.pick_tiles(width, out_channels)
        wo, wi_loop = sch.split(w, [None, wi])
        coo, coi = sch.split(co, [None, oci])
        # Reduction outside the tile: each step broadcasts one input value per column and loads
        # the weight row (contiguous in HWIO) as vectors into the accumulators.
        kh, kw, cin = (_extent(sch, lp) for lp in (rh, rw, rc))
        weight_elems = out_channels * (kh or 1) * (kw or 1) * (cin or 1)
        rows = _extent(sch, h) or 1
        if weight_elems > rows * width * (cin or 1):
            # Weights outweigh the input (late 1x1 layers, classifiers): walk the rows inside a
            # channel block so its weight slice stays in L1 instead of streaming from L3 per row.
            sch.reorder(n, coo, h, wo, rh, rw, rc, wi_loop, coi)
            outer = sch.fuse(n, coo, h)
        else:
            sch.reorder(n, h, coo, wo, rh, rw, rc, wi_loop, coi)
            outer = sch.fuse(n, h, coo)
        sch.parallel(outer)
        if epilogue:
            last = epilogue[-1]
            sch.reverse_compute_at(last, wo)
            tail = sch.get_loops(last)[-1]
            tail_ext = _extent(sch, tail)
            if tail_ext is not None and tail_ext == oci and oci <= self.info.lanes:
                sch.vectorize(tail)
            else:
                _vectorize_tail(sch, tail, self.info.lanes)
        sch.unroll(wi_loop)
        sch.vectorize(coi)
        # Must follow vectorize/unroll: the other order fails with "not compact dataflow".
        sch.decompose_reduction(conv, rh)
        for pad in producers:
            block = sch.get(pad)
            src, dst = block.reads[0].source.shape, block.writes[0].source.shape
            if [int(d) for d in src] == [int(d) for d in dst]:
                # No padding (1x1 / valid conv): a copy per tile would cost as much as the FMAs.
                sch.compute_inline(pad)
                continue
            sch.compute_at(pad, outer)
            pad_loops = sch.get_loops(pad)
            _vectorize_tail(sch, pad_loops[-1], self.info.lanes)
        return sch


class Matmul(ScheduleRule):
    """``out[i, j] = sum_k x[i, k] * W[k, j]`` (+ epilogue), vectorised over ``j``.

    This is the form Gemm/MatMul layers with constant weights take after import (the frontend
    transposes ``W`` for ``transB=1`` and FoldConstant materialises it), so the weight row for a
    given ``k`` is contiguous.
    """

    def __init__(self, info: CpuVectorInfo) -> None:
        self.info = info

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            return self._schedule(sch)
        except _SCHEDULE_ERRORS:
            return None

    def _schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = _root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        if not names or not names[0].startswith("matmul"):
            return None
        mm, epilogue = blocks[0], blocks[1:]
        if _iter_types(sch, mm) != [_DATA_PAR, _DATA_PAR, _COMM_REDUCE]:
            return None
        if not all(_is_spatial(sch, b) for b in epilogue):
            return None
        loops = sch.get_loops(mm)
        if len(loops) != 3:
            return None
        i, j, k = loops
        cols = _extent(sch, j)
        lanes = self.info.lanes
        if cols is None or cols % lanes:
            return None
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        # Up to 4 vectors of columns per tile; column blocks are the parallel (and cache) unit.
        tile = next(t for t in (4 * lanes, 2 * lanes, lanes) if cols % t == 0)
        jo, ji = sch.split(j, [None, tile])
        sch.reorder(jo, i, k, ji)
        sch.parallel(jo)
        if epilogue:
            last = epilogue[-1]
            sch.reverse_compute_at(last, i)
            _vectorize_tail(sch, sch.get_loops(last)[-1], lanes)
        sch.vectorize(ji)
        sch.decompose_reduction(mm, k)
        return sch


class ParallelVectorize(ScheduleRule):
    """Fallback for everything else: parallel outer loops, vectorised inner spatial loop.

    Elementwise blocks are inlined first. For a block with reduction loops (pooling, means over
    H and W in NHWC) the last spatial loop, usually channels, is moved inside the reduction so
    it can be vectorised.
    """

    def __init__(self, info: CpuVectorInfo) -> None:
        self.info = info

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            blocks = _root_blocks(sch)
            if not blocks:
                return None
            _inline_spatial_chain(sch, blocks[:-1])
            changed = False
            for block in _root_blocks(sch):
                changed |= self._schedule_block(sch, block)
        except _SCHEDULE_ERRORS:
            return None
        return sch if changed else None

    def _schedule_block(self, sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
        loops = sch.get_loops(block)
        kinds = _iter_types(sch, block)
        if not loops or len(loops) != len(kinds):
            return False  # not a plain loop-per-axis nest
        extents = [_extent(sch, lp) for lp in loops]
        if any(e is None for e in extents):
            return False
        spatial = [lp for lp, t in zip(loops, kinds, strict=True) if t == _DATA_PAR]
        reduce = [lp for lp, t in zip(loops, kinds, strict=True) if t == _COMM_REDUCE]
        if len(spatial) + len(reduce) != len(loops) or not spatial:
            return False
        if kinds != sorted(kinds):
            return False  # reduction loops interleaved with spatial ones: leave it alone
        lanes = self.info.lanes
        work = math.prod(e for e, t in zip(extents, kinds, strict=True) if t == _DATA_PAR)
        inner = spatial[-1]
        inner_ext = _extent(sch, inner)
        vectorize = inner_ext is not None and inner_ext % lanes == 0
        if len(spatial) == 1 and not reduce and vectorize:
            # A flat elementwise loop: vector chunks inside, parallel chunks outside.
            outer, inner = sch.split(inner, [None, lanes])
            if work >= _MIN_PARALLEL_ELEMENTS:
                sch.parallel(outer)
            sch.vectorize(inner)
            return True
        vectorize = vectorize and len(spatial) > 1
        if reduce and vectorize:
            sch.reorder(*spatial[:-1], *reduce, inner)
        head = spatial[:-1] if vectorize else spatial
        outer = sch.fuse(*head) if len(head) > 1 else head[0]
        if work >= _MIN_PARALLEL_ELEMENTS:
            sch.parallel(outer)
        if vectorize:
            if reduce:
                # The reduction init cannot share a vectorised loop with the update.
                sch.decompose_reduction(block, reduce[0])
            _vectorize_tail(sch, inner, lanes)
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
            for block in _root_blocks(sch):
                ivs = sch.get(block).iter_vars
                if any(int(iv.iter_type) == _COMM_REDUCE for iv in ivs):
                    spatial = [iv.dom.extent for iv in ivs if int(iv.iter_type) == _DATA_PAR]
                    if all(isinstance(e, tirx.IntImm) and int(e) == 1 for e in spatial):
                        return None
        except _SCHEDULE_ERRORS:
            return None
        return super().apply(func, target, tunable)


_IEEE_FLOAT_BITS = {"float16": 16, "float32": 32, "float64": 64}


def float_lanes(info: CpuVectorInfo, func: tirx.PrimFunc) -> int:
    """Vector lanes for ``func``: ``info.lanes`` float32 lanes scaled to the narrowest float type
    its blocks compute (write), twice as many for float16; ``info.lanes`` when none is float.

    Written, not read, buffers decide: an int8 or float32 kernel that only reads a float16
    scale still computes with float32 vectors.
    """
    try:
        sch = s_tir.Schedule(func)
        written = [region.source.dtype for block in _root_blocks(sch) for region in sch.get(block).writes]
    except _SCHEDULE_ERRORS:
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


def default_rules(target: Target) -> list[ScheduleRule]:
    """The CPU rules in priority order for ``target``."""
    from .arm_dsp import Int8DspConv, has_dsp
    from .x86_int8 import Int8PmaddwdConv, has_avx2

    info = cpu_vector_info(target)
    # Cortex-M4/M7: int8 conv2d/matmul with SMLAD first; x86 with AVX2: with vpmaddwd (each
    # declines anything else).
    dsp: list[ScheduleRule] = [Int8DspConv()] if has_dsp(target) else []
    pmaddwd: list[ScheduleRule] = [Int8PmaddwdConv()] if has_avx2(target) else []
    return [
        *dsp,
        *pmaddwd,
        _LanesByDtype(Conv2dNHWC, info),
        _LanesByDtype(Matmul, info),
        dlight.cpu.GEMV(),
        _Reduction(),
        _LanesByDtype(ParallelVectorize, info),
    ]


def apply_default_cpu_schedules(target: Target) -> tvm.transform.Pass:
    """A module pass that schedules every not-yet-scheduled PrimFunc with :func:`default_rules`.

    Run it inside ``with target:`` (or on functions carrying a ``target`` attribute), after the
    Relax zero pipeline has fused and legalized the module. Packed-weight decode blocks are
    inlined into their conv2d/matmul first (:func:`.weight_fusion.inline_weight_decode`).

    Args:
        target: The CPU target the rules are parameterised for.

    Returns:
        The pass; scheduled functions get the ``tirx.is_scheduled`` attribute.
    """
    from .weight_fusion import inline_weight_decode

    return tvm.transform.Sequential(
        [inline_weight_decode(), dlight.ApplyDefaultSchedule(*default_rules(target))]
    )
