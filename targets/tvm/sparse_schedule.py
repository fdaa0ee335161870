"""The CPU schedule of a sparse kernel fused with its epilogue: the epilogue runs per row.

A sparse kernel (:mod:`.sparse_kernels`) is a ``kOutEWiseFusable`` kernel, so ``FuseOps`` gives
it its element-wise consumers (bias, requantization, clamp, cast; a float bias or activation)
and ``FuseTIR`` makes one PrimFunc of them, whose accumulator is then a buffer of the whole
output (``int32[N, O, OH, OW]`` for int8: four times the int8 output, in the arena on
runtime-free targets). :class:`SparseRows` inlines the epilogue into one block and computes it
under the kernel's row loop, so each row's accumulator is finished (requantized) as soon as
its non-zeros are walked: the accumulator shrinks to one row (``[N, 1, OH, OW]``, on the stack
when under 1 KB), and the row loop stays parallel.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .schedule_common import SCHEDULE_ERRORS, root_blocks
from .sparse_kernels import KERNEL_PREFIX, ROW_STARTS

__all__ = ["SparseRows"]


class SparseRows(ScheduleRule):
    """Schedules every PrimFunc holding a sparse kernel (and declines any other).

    The kernel's own loops are written as it needs them (:mod:`.sparse_kernels`); this rule only
    places the fused epilogue. Where TVM refuses that (an epilogue block that cannot be inlined),
    the function is kept as written: correct, with the whole accumulator in a buffer.
    """

    def is_target_available(self, target: Target) -> bool:
        return True  # the kernel is plain loops: any CPU target, LLVM or C

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        names = [sch.get(block).name_hint for block in blocks]
        rows = [i for i, name in enumerate(names) if name.startswith(KERNEL_PREFIX) and name != ROW_STARTS]
        if len(rows) != 1:
            return None
        epilogue = blocks[rows[0] + 1 :]
        if not epilogue:
            return sch
        try:
            for block in epilogue[:-1]:
                sch.compute_inline(block)
            row_loop = sch.get_loops(blocks[rows[0]])[-1]
            sch.reverse_compute_at(epilogue[-1], row_loop)
        except SCHEDULE_ERRORS:
            return s_tir.Schedule(func)
        return sch
