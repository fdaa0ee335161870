"""What the CPU schedule rules share: the vector width and register budget of a CPU, and small
schedule helpers (block lists, loop extents, inlining, tail vectorisation)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

__all__ = [
    "COMM_REDUCE",
    "DATA_PAR",
    "MIN_PARALLEL_ELEMENTS",
    "SCHEDULE_ERRORS",
    "CpuRule",
    "CpuVectorInfo",
    "cpu_vector_info",
    "extent",
    "gather_input_copies",
    "inline_spatial_chain",
    "is_padding",
    "is_select",
    "is_spatial",
    "iter_types",
    "root_blocks",
    "vectorize_tail",
]

# A parallel loop costs a thread-pool launch (a few microseconds); below this many output
# elements a kernel is faster on one core.
MIN_PARALLEL_ELEMENTS = 4096

# TVM 0.27 has no tvm.TVMError: FFI errors arrive as RuntimeError subclasses (ScheduleError,
# InternalError) or as ValueError/TypeError/IndexError.
SCHEDULE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)

DATA_PAR = 0  # tirx.IterVar.DataPar
COMM_REDUCE = 2  # tirx.IterVar.CommReduce


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


def extent(sch: s_tir.Schedule, loop: s_tir.LoopRV) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def root_blocks(sch: s_tir.Schedule) -> list[s_tir.SBlockRV]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def iter_types(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def is_spatial(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    return all(t == DATA_PAR for t in iter_types(sch, block))


def inline_spatial_chain(sch: s_tir.Schedule, blocks: Sequence[s_tir.SBlockRV]) -> None:
    """Inline elementwise blocks into their consumers (or producers), where TVM allows it."""
    for block in blocks:
        if not is_spatial(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except SCHEDULE_ERRORS:
            with contextlib.suppress(*SCHEDULE_ERRORS):
                sch.reverse_compute_inline(block)


def vectorize_tail(sch: s_tir.Schedule, loop: s_tir.LoopRV, lanes: int) -> None:
    """Vectorise ``loop`` in chunks of ``lanes`` when its extent is a multiple of it."""
    ext = extent(sch, loop)
    if ext is None or ext < lanes or ext % lanes:
        return
    if ext == lanes:
        sch.vectorize(loop)
        return
    _, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)


class CpuRule(ScheduleRule):
    """A CPU schedule rule parameterised by the vector info: ``schedule`` returns the schedule or
    ``None`` (declined); a schedule primitive that refuses also declines, so odd shapes fall
    back to the next rule instead of failing the build."""

    def __init__(self, info: CpuVectorInfo) -> None:
        self.info = info

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self.schedule(s_tir.Schedule(func))
        except SCHEDULE_ERRORS:
            return None

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        raise NotImplementedError


def is_select(value: object) -> bool:
    """Whether a TIR expression is an ``if_then_else`` (a padding copy's bounds-tested load)."""
    import tvm

    op = getattr(value, "op", None)
    return isinstance(op, tvm.ir.Op) and op.same_as(tvm.ir.Op.get("prim.if_then_else"))


def is_padding(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    """Whether ``block`` stores a bounds-tested value (a padding copy), not a plain load."""
    return is_select(getattr(sch.get(block).body, "value", None))


def gather_input_copies(sch: s_tir.Schedule) -> s_tir.SBlockRV | None:
    """Inlines the copies in front of the first reduction into the last of them (a convolution's
    ``pad_temp``), which inlines too when it does not pad; returns the padding copy that is left.

    The copies are the conv's own ``pad_temp`` plus, when a padding kernel was merged into the
    conv (:func:`.fused_kernels.fuse_input_padding`), its layout transposes and zero-point pad.
    """
    blocks = root_blocks(sch)
    first = next((i for i, b in enumerate(blocks) if not is_spatial(sch, b)), None)
    if not first:
        return None
    copies = blocks[:first]
    for block in copies[:-1]:
        sch.compute_inline(block)
    last = copies[-1]
    if is_padding(sch, last):
        return last
    sch.compute_inline(last)
    return None
