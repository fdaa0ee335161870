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
module (numpy, at build time) and re-adds the kernel under a new ``GlobalVar`` (the old one keeps
the old signature, which ``CallTIRRewrite`` checks). A weight that is not a constant cannot be
permuted: :class:`EdgecError` (ONNX initializers, what the rule is for, always are constants).
``EDGEC_ARM_DSP=0`` switches the rule off (for comparisons).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.script import tirx as T
from tvm.target import Target

from edgec.errors import EdgecError

__all__ = [
    "DOT4_INTRIN",
    "WEIGHT_PERMUTATION_ATTR",
    "Int8DspConv",
    "has_dsp",
    "relayout_constant_weights",
    "weight_permutation",
]

DOT4_INTRIN = "edgec_arm_dsp_dot4_i8i8i32"
WEIGHT_PERMUTATION_ATTR = "edgec.arm_dsp_weight_permutation"

_SCHEDULE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)
_DATA_PAR, _COMM_REDUCE = 0, 2
# Output tile: columns x channels (4 int32 accumulators, 2+2 int16x2 operand words: with the
# pointers and the loop counter this fills the 13 usable core registers of Thumb-2).
_TILE_COLUMNS, _TILE_CHANNELS = 2, 2


def has_dsp(target: Target | dict) -> bool:
    """Whether ``target`` is an Armv7E-M core (DSP extension: Cortex-M4/M7) and the rule is on."""
    if os.environ.get("EDGEC_ARM_DSP", "1") == "0":
        return False
    attrs = target if isinstance(target, dict) else target.attrs
    return str(attrs.get("mtriple", "") or "").startswith("thumbv7em")


def _sxtb16(x):
    return T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", x)


def _ror8(x):
    # fshr(x, x, 8) is LLVM's rotate right, which instruction selection folds into SXTB16's
    # ROR #8 operand (a plain shift would cost one more instruction per word).
    return T.call_llvm_pure_intrin("int32", "llvm.fshr", x, x, T.int32(8))


@T.prim_func(s_tir=True)
def _dot4_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4,), "int8", offset_factor=1)
    C = T.match_buffer(c, (1,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        for k in range(4):
            with T.sblock("update"):
                vk = T.axis.remap("R", [k])
                C[0] = C[0] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk])


@T.prim_func(s_tir=True)
def _dot4_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4,), "int8", offset_factor=1)
    C = T.match_buffer(c, (1,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        # meta_var: expressions, not locals (a local would become a workspace allocation).
        x = T.meta_var(T.reinterpret("int32", A.vload([0], "int8x4")))
        w = T.meta_var(T.reinterpret("int32", B.vload([0], "int8x4")))
        # Rotating by 8 moves bytes 1 and 3 to positions 0 and 2.
        C[0] = T.call_llvm_pure_intrin(
            "int32",
            "llvm.arm.smlad",
            _sxtb16(_ror8(x)),
            _sxtb16(_ror8(w)),
            T.call_llvm_pure_intrin("int32", "llvm.arm.smlad", _sxtb16(x), _sxtb16(w), C[0]),
        )


s_tir.TensorIntrin.register(DOT4_INTRIN, _dot4_desc, _dot4_impl, override=True)


def _extent(sch: s_tir.Schedule, loop: s_tir.LoopRV) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _is_int8_mac(store: Any) -> tuple[Any, Any] | None:
    """``acc = acc + int32(a[..]) * int32(b[..])`` with int8 ``a``/``b``: returns the two loads."""
    value = store.value if isinstance(store, tirx.BufferStore) else None
    if not isinstance(value, tirx.Add) or not isinstance(value.b, tirx.Mul):
        return None
    loads = []
    for operand in (value.b.a, value.b.b):
        if not isinstance(operand, tirx.Cast) or not isinstance(operand.value, tvm.ir.TensorLoad):
            return None
        if str(operand.value.source.dtype) != "int8" or str(operand.ty) != "int32":
            return None
        loads.append(operand.value)
    return loads[0], loads[1]


class Int8DspConv(ScheduleRule):
    """SMLAD schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (see the module docstring)."""

    def is_target_available(self, target: Target) -> bool:
        return has_dsp(target)

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self._schedule(func)
        except _SCHEDULE_ERRORS:
            return None  # a primitive refused: the plain rules take the function

    def _schedule(self, func: tirx.PrimFunc) -> s_tir.Schedule | None:
        found = self._match(s_tir.Schedule(func))
        if found is None:
            return None
        name, weight_name, conv = found
        params = [i for i, p in enumerate(func.params) if p.name == weight_name]
        if len(params) != 1:
            return None  # the weight is computed inside the function, not a parameter
        sch = s_tir.Schedule(func)
        rank = len(sch.get(sch.get_sblock(name)).body.value.b.b.value.source.shape)
        permutation = [*range(rank - 2), rank - 1, rank - 2]
        sch = s_tir.Schedule(func.with_attr(WEIGHT_PERMUTATION_ATTR, {params[0]: permutation}))
        self._inline_copies(sch)
        main = sch.get_sblock(name)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        epilogue = blocks[[sch.get(b).name_hint for b in blocks].index(name) + 1 :]
        sch.transform_layout(main, weight_name, lambda *idx: (*idx[:-2], idx[-1], idx[-2]))
        loops = sch.get_loops(main)
        if conv:
            n, h, w, co, ry, rx, rc = loops
        else:
            w, co, rc = loops
        columns = _extent(sch, w) or 1
        wo, wi = sch.split(w, [None, _TILE_COLUMNS if columns % _TILE_COLUMNS == 0 else 1])
        coo, coi = sch.split(co, [None, _TILE_CHANNELS])
        rco, rci = sch.split(rc, [None, 4])
        if conv:
            sch.reorder(n, h, coo, wo, ry, rx, rco, wi, coi, rci)
            sch.fuse(n, h, coo)
            first_reduce = ry
        else:
            sch.reorder(coo, wo, rco, wi, coi, rci)
            first_reduce = rco
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], wo)
        sch.decompose_reduction(main, first_reduce)
        sch.tensorize(rci, DOT4_INTRIN)
        sch.unroll(wi)
        sch.unroll(coi)
        return sch

    @staticmethod
    def _inline_copies(sch: s_tir.Schedule) -> None:
        """Inlines the ``pad_temp`` copies in front of the conv (its padding is done outside)."""
        for block in list(sch.get_child_blocks(sch.get_sblock("root"))):
            if sch.get(block).name_hint.startswith("pad_temp"):
                sch.compute_inline(block)

    def _match(self, sch: s_tir.Schedule) -> tuple[str, str, bool] | None:
        """``(block name, weight buffer name, is a conv)`` when the function fits, else None."""
        self._inline_copies(sch)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        names = [sch.get(b).name_hint for b in blocks]
        if not names or not names[0].startswith(("conv2d_nhwc", "matmul")):
            return None
        stmt = sch.get(blocks[0])
        conv = names[0].startswith("conv2d_nhwc")
        kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
        if kinds != ([_DATA_PAR] * 4 + [_COMM_REDUCE] * 3 if conv else [_DATA_PAR] * 2 + [_COMM_REDUCE]):
            return None
        for block in blocks[1:]:
            if any(int(iv.iter_type) != _DATA_PAR for iv in sch.get(block).iter_vars):
                return None
        loads = _is_int8_mac(stmt.body)
        if loads is None or str(stmt.body.buffer.dtype) != "int32":
            return None
        data, weight = loads
        ivars = [iv.var for iv in stmt.iter_vars]
        reduce_var, channel_var = ivars[-1], ivars[3] if conv else ivars[1]
        # Data: reduction innermost. Weight: (..., reduction, output channel), rewritten to
        # (..., output channel, reduction).
        if not _same_var(data.indices[-1], reduce_var) or len(weight.indices) < 2:
            return None
        if not (_same_var(weight.indices[-1], channel_var) and _same_var(weight.indices[-2], reduce_var)):
            return None
        loops = sch.get_loops(blocks[0])
        extents = [_extent(sch, lp) for lp in loops]
        if len(loops) != len(kinds) or any(e is None for e in extents):
            return None
        channels, reduction = extents[3 if conv else 1], extents[-1]
        if reduction % 4 or channels % _TILE_CHANNELS:
            return None
        return names[0], weight.source.name, conv


def _same_var(index: Any, var: Any) -> bool:
    return index.same_as(var)


def weight_permutation(func: Any) -> dict[int, list[int]]:
    """``{parameter index: axis permutation}`` of a kernel :class:`Int8DspConv` scheduled, else ``{}``."""
    if not isinstance(func, tirx.PrimFunc) or func.attrs is None or WEIGHT_PERMUTATION_ATTR not in func.attrs:
        return {}
    return {int(k): [int(a) for a in v] for k, v in func.attrs[WEIGHT_PERMUTATION_ATTR].items()}


def relayout_constant_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Transposes the constant weights of calls to functions :class:`Int8DspConv` scheduled.

    Every ``call_tir`` whose callee carries :data:`WEIGHT_PERMUTATION_ATTR` gets the constant
    argument at each listed position replaced by its numpy transpose, matching the layout the
    kernel was rewritten to. Raises :class:`EdgecError` when such an argument is not a constant.
    """
    from tvm import relax

    permutations = {gv.name_hint: p for gv, func in mod.functions.items() if (p := weight_permutation(func))}
    if not permutations:
        return mod
    # A GlobalVar keeps the signature from before the layout change (CallTIRRewrite checks the
    # arguments against it, and it cannot be overwritten): re-add each kernel under a new one.
    mod = mod.clone()
    kernels = {}
    for name in permutations:
        old = mod.get_global_var(name)
        kernels[name] = mod[old]
        del mod[old]
    builder = relax.BlockBuilder(mod)
    renamed = {name: builder.add_func(func, name) for name, func in kernels.items()}
    mod = builder.get()
    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class Relayout(relax.PyExprMutator):
        def visit_call_(self, op: Any) -> Any:
            call = self.visit_expr_post_order(op)
            if not call.op.same_as(call_tir) or call.args[0].name_hint not in permutations:
                return call
            args = list(call.args[1].fields)
            for index, permutation in permutations[call.args[0].name_hint].items():
                arg = args[index]
                if isinstance(arg, relax.Var):
                    arg = self.lookup_binding(arg)
                data = getattr(arg, "value", None) if arg is not None else None
                if not isinstance(data, tvm.runtime.Tensor):
                    name = call.args[0].name_hint
                    raise EdgecError(f"the SMLAD kernel {name} needs a constant weight (argument {index})")
                value = np.ascontiguousarray(np.transpose(data.numpy(), permutation))
                args[index] = relax.const(value, str(value.dtype))
            callee = renamed[call.args[0].name_hint]
            return relax.Call(call.op, [callee, relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = Relayout(mod).visit_expr(func)
    return mod
