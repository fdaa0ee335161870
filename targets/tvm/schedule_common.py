"""What the CPU schedule rules share: the vector width and register budget of a CPU, and small
schedule helpers (block lists, loop extents, inlining, tail vectorisation)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .relax_program import ROW_WINDOW_ATTR

__all__ = [
    "COMM_REDUCE",
    "DATA_PAR",
    "MIN_PARALLEL_ELEMENTS",
    "MIN_PARALLEL_MACS",
    "ROW_WINDOW_ATTR",
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
    "row_window",
    "vectorize_tail",
    "with_row_window",
]

# A parallel loop costs a thread-pool launch (a few microseconds); below this many output
# elements a kernel is faster on one core.
MIN_PARALLEL_ELEMENTS = 4096
# The same for multiply-accumulates: below this many (a few microseconds of one core's FMAs) a
# conv or matmul spends more on waking the pool than it saves (the digits classifier: 23 us
# parallel, under 1 us serial).
MIN_PARALLEL_MACS = 1 << 17

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

    def vector_width(self, channels: int) -> int:
        """The widest native vector (``lanes``, ``lanes/2`` ...) that divides the output channels.

        A tile of 48 channels vectorised as one 48-lane vector leaves LLVM a non-power-of-two
        vector type: it legalizes it with lane inserts and stack spills around every FMA (a 1x1
        conv ran at 2.5 GMAC/s instead of 90). Tiles are whole native vectors instead: 72
        channels with AVX-512 are nine 8-lane vectors. 1 when no power of two divides them.
        """
        width = self.info.lanes
        while width > 1 and channels % width:
            width //= 2
        return width


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


def row_window(sch: s_tir.Schedule, conv: s_tir.SBlockRV) -> list[int] | None:
    """``[data parameter, window rows, stride, pad bound]`` of an NHWC conv block (after
    :func:`gather_input_copies`), for :data:`ROW_WINDOW_ATTR`; ``None`` when it is not readable.

    The conv reads its input (or the padding copy of it) at row ``y·stride + r·dilation``; the pad
    bound is all the padding the copy adds to the height (at least the padding above).
    """
    from tvm.sym.pattern import detect_linear_equation

    func = sch.mod["main"]
    stmt = sch.get(conv)
    ivars = [iv.var for iv in stmt.iter_vars]
    if len(ivars) != 7:
        return None
    rows, kernel_rows = ivars[1], int(stmt.iter_vars[4].dom.extent)
    reads = [
        r for r in stmt.reads if len(r.source.shape) == 4 and not r.source.same_as(stmt.writes[0].source)
    ]
    source = next((r for r in reads if any(v.same_as(rows) for v in _vars(r.region[1].min))), None)
    if source is None:
        return None
    coefficients = detect_linear_equation(source.region[1].min, [rows, ivars[4]])
    if len(coefficients) != 3:
        return None
    stride, dilation = int(coefficients[0]), int(coefficients[1])
    data, padded = source.source, int(source.source.shape[1])
    if not any(p.name == data.name for p in func.params):  # a padding copy: its source
        copies = [b for b in root_blocks(sch) if sch.get(b).writes[0].source.same_as(data)]
        if len(copies) != 1 or not sch.get(copies[0]).reads:
            return None
        data = sch.get(copies[0]).reads[0].source
    params = [i for i, p in enumerate(func.params) if p.name == data.name]
    if len(params) != 1 or stride < 1:
        return None
    return [params[0], (kernel_rows - 1) * dilation + 1, stride, max(0, padded - int(data.shape[1]))]


def _vars(expr: object) -> list[object]:
    import tvm_ffi

    found: list[object] = []
    tvm_ffi.structural_walk(expr, (tirx.Var, lambda v, out=found: out.append(v)))
    return found


def with_row_window(sch: s_tir.Schedule, window: list[int] | None) -> s_tir.Schedule:
    """``sch`` with :data:`ROW_WINDOW_ATTR` set on its function (unchanged when ``window`` is None)."""
    if window is None:
        return sch
    return s_tir.Schedule(sch.mod["main"].with_attr(ROW_WINDOW_ATTR, window))
