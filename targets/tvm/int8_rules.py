"""What edgec's int8 micro-kernel schedule rules share (:mod:`.arm_dsp`, :mod:`.x86_int8`).

Both rules replace the innermost steps of an int8 x int8 -> int32 reduction::

    conv2d (NHWC/HWIO):  acc[n, h, w, co] += int32(x[n, h·s + ry, w·s + rx, rc]) · int32(W[ry, rx, rc, co])
    matmul:              acc[i, j]        += int32(x[i, k]) · int32(W[k, j])

by a tensor intrinsic, and both need the constant weight ``W`` stored in another order than the
one Relax gives the kernel. Two things are shared:

* :func:`match_int8_reduction` recognises such a kernel (the block as Relax legalizes it, padding
  copies in front, only elementwise blocks after; the weight a plain int8 parameter of the
  function, indexed ``(..., reduction, output channel)``) and reports its loop extents, or
  returns ``None``. Each rule adds its own divisibility checks.
* :func:`relayout_constant_weights` applies, at build time in numpy, the layout change a rule
  made to a kernel's weight parameter: the rule records it in a function attribute
  (``{parameter index: layout}``), and every ``call_tir`` of that kernel gets the constant
  argument replaced by ``transform(value, layout)``. The kernel is re-added under a new
  ``GlobalVar``, because the old one keeps the signature from before the change and
  ``CallTIRRewrite`` checks the arguments against it. A weight that is not a constant cannot be
  re-laid out: :class:`EdgecError` (ONNX initializers, what the rules are for, always are constants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from edgec.errors import EdgecError

from .schedule_common import COMM_REDUCE, DATA_PAR, SCHEDULE_ERRORS

__all__ = [
    "Int8MicroKernelRule",
    "Int8Reduction",
    "is_int8_mac",
    "kernel_layouts",
    "loop_extent",
    "match_int8_reduction",
    "relayout_constant_weights",
]

_CONV_KINDS = [DATA_PAR] * 4 + [COMM_REDUCE] * 3
_MATMUL_KINDS = [DATA_PAR] * 2 + [COMM_REDUCE]


@dataclass(frozen=True)
class Int8Reduction:
    """An int8 conv2d/matmul kernel a micro-kernel rule may take.

    Attributes:
        block: Name of the reduction block (``conv2d_nhwc...`` or ``matmul...``).
        weight: Name of the weight buffer (a parameter of the function).
        weight_param: Its index in the function's parameters.
        conv: A conv2d (loops ``n, h, w, co, ry, rx, rc``) or a matmul (``i, j, k``).
        extents: The constant extents of those loops, in that order.
        weight_rank: Dimensions of the weight (4 for HWIO, 2 for a matmul).
    """

    block: str
    weight: str
    weight_param: int
    conv: bool
    extents: tuple[int, ...]
    weight_rank: int

    @property
    def channels(self) -> int:
        """Output channels (``co``, or ``j`` of a matmul)."""
        return self.extents[3 if self.conv else 1]

    @property
    def reduction(self) -> int:
        """The innermost reduction extent (input channels ``rc``, or ``k``)."""
        return self.extents[-1]


def loop_extent(sch: s_tir.Schedule, loop: s_tir.LoopRV) -> int | None:
    """The constant extent of ``loop``, or ``None`` when it is symbolic."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def is_int8_mac(store: Any) -> tuple[Any, Any] | None:
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


def match_int8_reduction(func: tirx.PrimFunc, sch: s_tir.Schedule) -> Int8Reduction | None:
    """The int8 conv2d/matmul of ``func`` (scheduled as ``sch``), or ``None`` when it is not one.

    Fits: root blocks ``pad_temp*`` (any number), then one ``conv2d_nhwc*`` block with iterators
    ``SSSSRRR`` or one ``matmul*`` block with ``SSR``, then only spatial blocks; the reduction an
    int8 x int8 -> int32 multiply-accumulate; the data indexed with the innermost reduction
    variable last, the weight ``(..., reduction, output channel)`` and a parameter of ``func``.
    Grouped and depthwise convolutions legalize to other block names and weight indices, so they
    do not fit.
    """
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in blocks]
    first = next((i for i, n in enumerate(names) if not n.startswith("pad_temp")), None)
    if first is None or not names[first].startswith(("conv2d_nhwc", "matmul")):
        return None
    stmt = sch.get(blocks[first])
    conv = names[first].startswith("conv2d_nhwc")
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    if kinds != (_CONV_KINDS if conv else _MATMUL_KINDS):
        return None
    for block in blocks[first + 1 :]:
        if any(int(iv.iter_type) != DATA_PAR for iv in sch.get(block).iter_vars):
            return None
    loads = is_int8_mac(stmt.body)
    if loads is None or str(stmt.body.buffer.dtype) != "int32":
        return None
    data, weight = loads
    ivars = [iv.var for iv in stmt.iter_vars]
    reduce_var, channel_var = ivars[-1], ivars[3] if conv else ivars[1]
    if not data.indices[-1].same_as(reduce_var) or len(weight.indices) < 2:
        return None
    if not (weight.indices[-1].same_as(channel_var) and weight.indices[-2].same_as(reduce_var)):
        return None
    params = [i for i, p in enumerate(func.params) if p.name == weight.source.name]
    if len(params) != 1:
        return None  # the weight is computed inside the function, not a parameter
    loops = sch.get_loops(blocks[first])
    extents = [loop_extent(sch, lp) for lp in loops]
    if len(loops) != len(kinds) or any(e is None for e in extents):
        return None
    rank = len(weight.source.shape)
    return Int8Reduction(
        names[first], weight.source.name, params[0], conv, tuple(int(e) for e in extents), rank
    )


def kernel_layouts(func: Any, attr: str) -> dict[int, list[int]]:
    """``{parameter index: layout}`` recorded under ``attr`` on a PrimFunc, else ``{}``."""
    if not isinstance(func, tirx.PrimFunc) or func.attrs is None or attr not in func.attrs:
        return {}
    return {int(k): [int(a) for a in v] for k, v in func.attrs[attr].items()}


def relayout_constant_weights(
    mod: tvm.IRModule,
    attr: str,
    transform: Callable[[np.ndarray, list[int]], np.ndarray],
    kernel: str,
    applied_attr: str | None = None,
    shift_attr: str | None = None,
) -> tvm.IRModule:
    """Re-lays out the constant weights of calls to the PrimFuncs that carry ``attr``.

    Args:
        mod: The Relax module (after scheduling).
        attr: The function attribute a rule recorded, ``{parameter index: layout}``.
        transform: ``(weight, layout) -> weight in the kernel's layout`` (numpy).
        kernel: What to call such a kernel in an error (``"SMLAD"``).
        applied_attr: If given, each re-added kernel carries the layout under this name instead
            of ``attr``, so that a second call finds nothing left to do.
        shift_attr: A function attribute ``{bias index: [weight index, shift]}`` of kernels that
            read their int8 input shifted by ``shift`` (``vpdpbusd`` multiplies unsigned bytes):
            ``Σ (x + shift)·w = Σ x·w + shift·Σ w``, so the bias becomes ``bias - shift·Σ w``
            (``Σ w`` per output channel, the last weight axis).

    Returns:
        The module with the kernels re-added under new ``GlobalVar``s and their calls rewritten.

    Raises:
        EdgecError: When such a weight argument is not a constant.
    """
    from tvm import relax

    layouts = {gv.name_hint: p for gv, func in mod.functions.items() if (p := kernel_layouts(func, attr))}
    if not layouts:
        return mod
    shifts = {
        gv.name_hint: kernel_layouts(func, shift_attr)
        for gv, func in mod.functions.items()
        if shift_attr and gv.name_hint in layouts
    }
    mod = mod.clone()
    kernels = {}
    for name in layouts:
        old = mod.get_global_var(name)
        func = mod[old]
        if applied_attr is not None:
            func = func.without_attr(attr).with_attr(applied_attr, func.attrs[attr])
        if shift_attr and shift_attr in (func.attrs or {}):
            func = func.without_attr(shift_attr)  # applied: a second call must not shift again
        kernels[name] = func
        del mod[old]
    builder = relax.BlockBuilder(mod)
    renamed = {name: builder.add_func(func, name) for name, func in kernels.items()}
    mod = builder.get()
    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class Relayout(relax.PyExprMutator):
        def constant(self, arg: Any, name: str, index: int) -> np.ndarray:
            if isinstance(arg, relax.Var):
                arg = self.lookup_binding(arg)
            data = getattr(arg, "value", None) if arg is not None else None
            if not isinstance(data, tvm.runtime.Tensor):
                raise EdgecError(f"the {kernel} kernel {name} needs a constant weight (argument {index})")
            return data.numpy()

        def visit_call_(self, op: Any) -> Any:
            call = self.visit_expr_post_order(op)
            if not call.op.same_as(call_tir) or call.args[0].name_hint not in layouts:
                return call
            name = call.args[0].name_hint
            args = list(call.args[1].fields)
            original = {index: self.constant(args[index], name, index) for index in layouts[name]}
            for bias, (weight, shift) in shifts.get(name, {}).items():
                value = self.constant(args[bias], name, bias)
                sums = original[weight].astype(np.int64).reshape(-1, original[weight].shape[-1]).sum(axis=0)
                args[bias] = relax.const((value - shift * sums.reshape(value.shape)).astype(value.dtype))
            for index, layout in layouts[name].items():
                value = np.ascontiguousarray(transform(original[index], layout))
                args[index] = relax.const(value, str(value.dtype))
            callee = renamed[call.args[0].name_hint]
            return relax.Call(call.op, [callee, relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = Relayout(mod).visit_expr(func)
    return mod


class Int8MicroKernelRule(ScheduleRule):
    """A schedule rule for int8 conv2d/matmul kernels that declines what it cannot schedule.

    Subclasses say where it applies (``is_target_available``) and schedule in ``_schedule``,
    returning ``None`` for a function they do not fit; a refusing primitive also declines, so the
    plain rules always get the function.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self._schedule(func)
        except SCHEDULE_ERRORS:
            return None  # a primitive refused: the plain rules take the function

    def _schedule(self, func: tirx.PrimFunc) -> s_tir.Schedule | None:
        raise NotImplementedError
