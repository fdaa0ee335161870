"""CPU schedule of a softmax over an axis that is not the innermost one (YOLOv8's DFL softmax over
the 16 bins of ``(1, 16, 4, anchors)``), which dlight's reduction rule gets quadratically wrong.

dlight parallelises over the output's outer axes, the softmax axis among them, and computes the
max and the sum under that loop: once per element of the softmax axis, each over the whole axis
(16x the work, strided, scalar: 3.5 ms for YOLO's 134 K elements). Here each row (every axis but
the softmax one and the innermost) is one parallel task that computes its max, exponentials, sum
and quotients with the contiguous innermost axis in vectors and the softmax axis as the outer
loop of each reduction (0.2 ms).
"""

from __future__ import annotations

from tvm import s_tir

from .schedule_common import (
    COMM_REDUCE,
    DATA_PAR,
    MIN_PARALLEL_ELEMENTS,
    CpuRule,
    extent,
    iter_types,
    root_blocks,
)

__all__ = ["SoftmaxOverOuterAxis"]

# The first and last blocks of TOPI's softmax and fast_softmax (the exponentials between).
_MAX, _SUM, _NORM = "T_softmax_maxelem", "T_softmax_expsum", "T_softmax_norm"


class SoftmaxOverOuterAxis(CpuRule):
    """A softmax whose axis is not the innermost: rows in parallel, the innermost axis in vectors."""

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        if names[:1] + names[-2:] != [_MAX, _SUM, _NORM] or len(blocks) < 4:
            return None
        # The exponentials: one block, or the fast softmax's difference and polynomial (inlined).
        for block in blocks[1:-3]:
            sch.compute_inline(block)
        maxelem, exp, expsum, norm = root_blocks(sch)
        loops = sch.get_loops(norm)
        axis = int(sch.get(norm).annotations.get("axis", len(loops) - 1))
        if axis in (-1, len(loops) - 1) or iter_types(sch, norm) != [DATA_PAR] * len(loops):
            return None  # a last-axis softmax: rows are contiguous, dlight's rule takes it
        innermost = extent(sch, loops[-1])
        if innermost is None:
            return None
        sch.reorder(*loops[:axis], *loops[axis + 1 : -1], loops[axis], loops[-1])
        row = sch.fuse(*loops[:axis], *loops[axis + 1 : -1])
        if innermost * (extent(sch, loops[axis]) or 1) * (extent(sch, row) or 1) >= MIN_PARALLEL_ELEMENTS:
            sch.parallel(row)
        for block in (expsum, exp, maxelem):
            sch.compute_at(block, row)
        lanes = self.vector_width(innermost)
        for reduction in (maxelem, expsum):
            *_, inner, over_axis = sch.get_loops(reduction)
            if iter_types(sch, reduction)[-1] != COMM_REDUCE:
                return None
            # The softmax axis outside, so each step updates a vector of contiguous columns.
            sch.reorder(over_axis, inner)
            self._vectorize(sch, inner, lanes)
            sch.decompose_reduction(reduction, over_axis)
        for elementwise in (exp, norm):
            self._vectorize(sch, sch.get_loops(elementwise)[-1], lanes)
        return sch

    @staticmethod
    def _vectorize(sch: s_tir.Schedule, loop: s_tir.LoopRV, lanes: int) -> None:
        if lanes > 1:
            _, vector = sch.split(loop, [None, lanes])
            sch.vectorize(vector)
