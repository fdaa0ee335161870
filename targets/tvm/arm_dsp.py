"""int8 conv2d/dense kernels with the Arm M-profile DSP extension (``SMLAD``) for Cortex-M4/M7.

TVM 0.27 has no M-profile DSP schedules any more (they left with microTVM), and LLVM's own
vectorizer turns an int8 x int8 -> int32 reduction for ``thumbv7em`` into byte loads and ``SMLABB``
(one 16-bit MAC per instruction). The DSP extension does two: ``SMLAD acc, x, y`` adds
``x.lo16 * y.lo16 + x.hi16 * y.hi16``. CMSIS-NN's inner loop, written here as a TIR tensor
intrinsic (:data:`DOT4_INTRIN`, four int8 products into one int32)::

    x = *(int32 *)&a[k]            w = *(int32 *)&b[k]            (4 int8 each, one LDR)
    x02 = SXTB16(x)  x13 = SXTB16(x ROR 8)                        (bytes 0,2 and 1,3 as int16x2)
    w02 = SXTB16(w)  w13 = SXTB16(w ROR 8)
    acc = SMLAD(x13, w13, SMLAD(x02, w02, acc))

Both operands pair the same bytes, so the sum is exactly ``Σ a[k]·b[k]`` (int16 products of
int8 values cannot overflow, and int32 accumulation is exact): the kernels stay bit-exact with
the x86 integer build. The instructions come from ``T.call_llvm_pure_intrin`` with
``llvm.arm.sxtb16`` / ``llvm.arm.smlad``, which LLVM only accepts for cores with the DSP
extension (``thumbv7em``: Cortex-M4/M7; the M3 has none and keeps the plain schedule).

:class:`Int8DspConv` is a schedule rule in front of edgec's CPU rules for such targets. It takes
an int8 NHWC/HWIO conv2d (or a ``x @ W`` matmul) whose reduction over input channels is a multiple
of 4, stores its weights with the input channel innermost (``HWOI``, ``W^T``: each group of four
reduction values one word), tiles two output columns by two output channels (four accumulators
in registers, each loaded word used twice, as CMSIS-NN's ``mat_mult_kernel_s8_s16``), and
tensorizes the innermost four reduction steps with :data:`DOT4_INTRIN` (an odd output width gets
one-column tiles). Anything that does not fit - input channels not a multiple of 4 (a first layer
on a grey or RGB image), an odd number of output channels, float, grouped or other layouts -
returns ``None`` and falls back to the plain rules.

The weight layout change crosses the TIR/Relax boundary: the rule changes the PrimFunc's weight
parameter and records the permutation in the function attribute :data:`WEIGHT_PERMUTATION_ATTR`;
:func:`relayout_constant_weights` then transposes the constant argument of each call in the Relax
module (numpy, at build time; the machinery, shared with :mod:`.x86_int8`, is in
:mod:`.int8_rules`). ``edgec compile --no-micro-kernels`` switches the rule off (for comparisons).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from .int8_rules import Int8MicroKernelRule, kernel_layouts, loop_extent, match_int8_reduction
from .int8_rules import relayout_constant_weights as _relayout
from .schedule_common import gather_input_copies, row_window, with_row_window

__all__ = [
    "DOT4_INTRIN",
    "HELIUM_CORES",
    "WEIGHT_PERMUTATION_ATTR",
    "Int8DspConv",
    "has_dsp",
    "int8_dot_intrinsic",
    "relayout_constant_weights",
    "weight_permutation",
]

DOT4_INTRIN = "edgec_arm_dsp_dot4_i8i8i32"
WEIGHT_PERMUTATION_ATTR = "edgec.arm_dsp_weight_permutation"

# Armv8.1-M cores with Helium (MVE), which implies the DSP extension.
HELIUM_CORES = ("cortex-m55", "cortex-m85")
# Output tile: columns x channels (4 int32 accumulators, 2+2 int16x2 operand words: with the
# pointers and the loop counter this fills the 13 usable core registers of Thumb-2).
_TILE_COLUMNS, _TILE_CHANNELS = 2, 2


def has_dsp(target: Target | dict) -> bool:
    """Whether ``target`` has the DSP extension: Armv7E-M (Cortex-M4/M7) or Armv8.1-M Mainline
    (Cortex-M55, where Helium requires it)."""
    attrs = target if isinstance(target, dict) else target.attrs
    triple = str(attrs.get("mtriple", "") or "")
    if triple.startswith("thumbv8.1m.main"):
        return str(attrs.get("mcpu", "")) in HELIUM_CORES or "+dsp" in list(attrs.get("mattr", None) or [])
    return triple.startswith("thumbv7em")


def _sxtb16(x):
    return T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", x)


def _ror8(x):
    # fshr(x, x, 8) is LLVM's rotate right, which instruction selection folds into SXTB16's
    # ROR #8 operand (a plain shift would cost one more instruction per word).
    return T.call_llvm_pure_intrin("int32", "llvm.fshr", x, x, T.int32(8))


def int8_dot_intrinsic(lanes: int, accumulate: Callable[[Any, Any, Any], Any]) -> tuple[Any, Any]:
    """``(description, implementation)`` of a TIR tensor intrinsic ``C[0] += Σ_k<lanes A[k]·B[k]``
    (int8 products, int32 sum): the implementation is ``C[0] = accumulate(a, b, C[0])`` with ``a``
    and ``b`` the two int8 vectors, each one load."""

    @T.prim_func(s_tir=True)
    def description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (lanes,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0], A[0:lanes], B[0:lanes])
            T.writes(C[0])
            for k in range(lanes):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[0] = C[0] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (lanes,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0], A[0:lanes], B[0:lanes])
            T.writes(C[0])
            C[0] = accumulate(A.vload([0], f"int8x{lanes}"), B.vload([0], f"int8x{lanes}"), C[0])

    return description, implementation


def _smlad_pairs(a: Any, b: Any, acc: Any) -> Any:
    """``acc + Σ a[k]·b[k]`` over 4 int8 lanes: bytes 0,2 and 1,3 as int16 pairs, two SMLADs."""
    # Expressions, not locals (a local would become a workspace allocation).
    x, w = T.reinterpret("int32", a), T.reinterpret("int32", b)
    # Rotating by 8 moves bytes 1 and 3 to positions 0 and 2.
    even = T.call_llvm_pure_intrin("int32", "llvm.arm.smlad", _sxtb16(x), _sxtb16(w), acc)
    return T.call_llvm_pure_intrin("int32", "llvm.arm.smlad", _sxtb16(_ror8(x)), _sxtb16(_ror8(w)), even)


s_tir.TensorIntrin.register(DOT4_INTRIN, *int8_dot_intrinsic(4, _smlad_pairs), override=True)


class Int8DspConv(Int8MicroKernelRule):
    """SMLAD schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (see the module docstring).

    ``intrinsic`` computes ``lanes`` reduction steps; :class:`.arm_mve.Int8MveConv` is the same
    schedule with Helium's 16-lane one, its weights recorded under ``weight_attr``.
    """

    intrinsic = DOT4_INTRIN
    lanes = 4
    weight_attr = WEIGHT_PERMUTATION_ATTR

    def is_target_available(self, target: Target) -> bool:
        return has_dsp(target)

    def _schedule(self, func: tirx.PrimFunc) -> s_tir.Schedule | None:
        found = self._match(func, s_tir.Schedule(func))
        if found is None:
            return None
        name, weight_name, conv = found.block, found.weight, found.conv
        rank = found.weight_rank
        permutation = [*range(rank - 2), rank - 1, rank - 2]
        sch = s_tir.Schedule(func.with_attr(self.weight_attr, {found.weight_param: permutation}))
        padding = gather_input_copies(sch)
        main = sch.get_sblock(name)
        window = row_window(sch, main) if conv else None
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        epilogue = blocks[[sch.get(b).name_hint for b in blocks].index(name) + 1 :]
        sch.transform_layout(main, weight_name, lambda *idx: (*idx[:-2], idx[-1], idx[-2]))
        loops = sch.get_loops(main)
        if conv:
            n, h, w, co, ry, rx, rc = loops
        else:
            w, co, rc = loops
        columns = loop_extent(sch, w) or 1
        wo, wi = sch.split(w, [None, _TILE_COLUMNS if columns % _TILE_COLUMNS == 0 else 1])
        coo, coi = sch.split(co, [None, _TILE_CHANNELS])
        rco, rci = sch.split(rc, [None, self.lanes])
        if conv:
            sch.reorder(n, h, coo, wo, ry, rx, rco, wi, coi, rci)
            if padding is None:
                sch.fuse(n, h, coo)
            else:
                # The padded input rows one output row reads, copied once per row: the tensorized
                # reads stay plain loads, and the padded input never exists whole.
                sch.compute_at(padding, h)
            first_reduce = ry
        else:
            sch.reorder(coo, wo, rco, wi, coi, rci)
            first_reduce = rco
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], wo)
        sch.decompose_reduction(main, first_reduce)
        sch.tensorize(rci, self.intrinsic)
        sch.unroll(wi)
        sch.unroll(coi)
        return with_row_window(sch, window)  # a conv's rows are its outermost loop, in order

    def _match(self, func: tirx.PrimFunc, sch: s_tir.Schedule) -> Any:
        """The :class:`.int8_rules.Int8Reduction` when the function fits, else None."""
        gather_input_copies(sch)
        found = match_int8_reduction(func, sch)
        if found is None or found.reduction % self.lanes or found.channels % _TILE_CHANNELS:
            return None
        return found


def weight_permutation(func: Any) -> dict[int, list[int]]:
    """``{parameter index: axis permutation}`` of a kernel :class:`Int8DspConv` scheduled, else ``{}``."""
    return kernel_layouts(func, WEIGHT_PERMUTATION_ATTR)


def relayout_constant_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Transposes the constant weights of calls to functions :class:`Int8DspConv` scheduled.

    Every ``call_tir`` whose callee carries :data:`WEIGHT_PERMUTATION_ATTR` gets the constant
    argument at each listed position replaced by its numpy transpose, matching the layout the
    kernel was rewritten to. Raises :class:`EdgecError` when such an argument is not a constant.
    """
    return _relayout(mod, WEIGHT_PERMUTATION_ATTR, np.transpose, "SMLAD")
