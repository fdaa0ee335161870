"""Relax passes that keep tensors out of memory by making their producer and consumer one kernel.

Two tensors need not exist on a microcontroller, and TVM's ``FuseOps`` materializes both:

* the **pre-pool tensor** of an integer conv + pool the legalization fused
  (:mod:`edgec.targets.integer.conv_pool`): ``FuseOps`` never fuses two reductions (conv2d and a
  pool are both ``kOutEWiseFusable``), so the conv output would be a tensor of ``main``.
  :func:`outline_fused_kernels` runs before the Relax pipeline (after the layout conversion,
  which keeps variable names; legalization does not): each binding named
  :data:`~edgec.targets.integer.conv_pool.FUSED_MARKER` ``<n>_...`` ends a chain it outlines
  into one ``Primitive`` function, from the input's data movement (layout transposes, the
  zero-point padding) through ``n`` reductions (the conv; an average pool's window sum) to the
  pool; ``FuseTIR`` makes it one PrimFunc, which the schedules compute pooled pixel by pooled
  pixel (:mod:`.fused_schedules`).
* the **padded input** of a convolution whose input zero point is not 0: the integer conv pads
  explicitly with ``z_x`` (:mod:`edgec.targets.integer.conv`), and ``FuseOps`` puts the pad (and
  the layout transposes around it) in a kernel of its own, which writes a padded copy of the
  whole input. :func:`fuse_input_padding` (between ``FuseOps`` and ``FuseTIR``) merges such a pure
  data-movement kernel into the convolution that alone reads it; the schedules then copy only
  the padded window each output row or tile reads
  (:func:`.schedule_common.gather_input_copies`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tvm_ffi

from edgec.errors import EdgecError
from edgec.targets.integer.conv_pool import FUSED_MARKER
from edgec.targets.tvm.schedule_common import is_select

if TYPE_CHECKING:
    import tvm

__all__ = ["fuse_input_padding", "is_data_movement", "outline_fused_kernels"]

_ANCHORS = ("relax.nn.conv2d", "relax.matmul")
# Ops that move data without arithmetic: the outlined chain starts with these on the conv's input.
_MOVEMENT = ("relax.permute_dims", "relax.nn.pad", "relax.reshape", "relax.expand_dims", "relax.squeeze")


def _chain(bindings: list[Any], end: int, anchors: int, uses: dict[Any, int]) -> list[int]:
    """Indices of the bindings of the chain that ends at ``bindings[end]``: everything it reads
    back through ``anchors`` reductions, then only single-use data movement on the last one's input.

    Raises:
        EdgecError: when the chain has fewer reductions than its marker says, or a value inside it
            is read outside (the emission of a fused node never does either).
    """
    import tvm
    from tvm import relax

    defs = {binding.var: index for index, binding in enumerate(bindings)}
    chosen: set[int] = set()
    found = [0]

    def visit(var: Any, movement_only: bool) -> None:
        index = defs.get(var)
        if index is None or index in chosen:
            return
        value = bindings[index].value
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return
        if movement_only and (value.op.name not in _MOVEMENT or uses.get(var, 0) != 1):
            return
        chosen.add(index)
        if value.op.name in _ANCHORS:
            found[0] += 1
            visit(value.args[0], found[0] >= anchors)  # the weight stays a parameter
            return
        for arg in value.args:
            if isinstance(arg, relax.Var):
                visit(arg, movement_only)

    visit(bindings[end].var, False)
    name = bindings[end].var.name
    if found[0] != anchors:
        raise EdgecError(f"fused kernel '{name}': {found[0]} reductions in its chain, {anchors} expected")
    inside = {bindings[i].var for i in chosen}
    reads: dict[Any, int] = {}
    for index in chosen:
        for arg in bindings[index].value.args:
            if isinstance(arg, relax.Var) and arg in inside:
                reads[arg] = reads.get(arg, 0) + 1
    for var in inside:
        if not var.same_as(bindings[end].var) and reads.get(var, 0) != uses.get(var, 0):
            raise EdgecError(f"fused kernel '{name}': '{var.name}' is also read outside the kernel")
    return sorted(chosen)


def _outline(mod: Any, bindings: list[Any], chain: list[int]) -> tuple[Any, Any]:
    """The chain as a ``Primitive`` function of ``mod``: returns the module and the call replacing
    the chain's last binding (tensor constants become parameters, as ``FuseOps`` makes them)."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    inside = {bindings[i].var for i in chain}
    outer: list[Any] = []
    for index in chain:
        for arg in bindings[index].value.args:
            external = isinstance(arg, relax.Var) and arg not in inside
            tensor_const = isinstance(arg, GenericConst) and len(arg.ty.shape) > 0
            if (external or tensor_const) and not any(arg.same_as(o) for o in outer):
                outer.append(arg)
    params = [relax.Var(f"p{i}", arg.ty) for i, arg in enumerate(outer)]
    builder = relax.BlockBuilder(mod)
    # Named like FuseOps names its functions: after the ops, in order.
    name = "fused_" + "_".join(bindings[i].value.op.name.split(".")[-1] for i in chain)
    with builder.function(name, params, {"Primitive": True}, private=True):
        with builder.dataflow():
            renamed = list(zip(outer, params, strict=True))
            value = None
            for index in chain:
                call = bindings[index].value
                args = [next((p for o, p in renamed if o.same_as(a)), a) for a in call.args]
                value = builder.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
                renamed.append((bindings[index].var, value))
            out = builder.emit_output(value)
        gvar = builder.emit_func_output(out)
    mod = builder.get()
    return mod, relax.BlockBuilder(mod).normalize(relax.Call(gvar, outer))


def outline_fused_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """Outlines the fused conv + pool chains of ``main`` (module docstring); run before the Relax
    pipeline, as a plain function so that its errors stay edgec's (a TVM pass would wrap them).

    Raises:
        EdgecError: when a marked chain is not what a fused node emits.
    """
    from tvm import relax

    gv = mod.get_global_var("main")
    func = mod[gv]
    if not any(b.var.name.startswith(FUSED_MARKER) for block in func.body.blocks for b in block.bindings):
        return mod
    from .weight_fusion import _uses

    uses = _uses(func)
    blocks = []
    for block in func.body.blocks:
        bindings = list(block.bindings)
        dropped: set[int] = set()
        replaced: dict[int, Any] = {}
        for end, binding in enumerate(bindings):
            name = binding.var.name
            if not name.startswith(FUSED_MARKER):
                continue
            chain = _chain(bindings, end, int(name[len(FUSED_MARKER)]), uses)
            mod, call = _outline(mod, bindings, chain)
            dropped.update(chain[:-1])
            replaced[end] = relax.VarBinding(binding.var, call)
        kept = [replaced.get(i, b) for i, b in enumerate(bindings) if i not in dropped]
        blocks.append(type(block)(kept))
    body = relax.SeqExpr(blocks, func.body.body)
    mod[gv] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    return mod


def is_data_movement(func: Any) -> tuple[bool, bool]:
    """``(moves only, pads)`` for a PrimFunc: every store writes a loaded value (or, padding, a
    constant where the bounds test fails); and whether some store pads."""
    import tvm
    from tvm import tirx

    stores: list[Any] = []
    tvm_ffi.structural_walk(func.body, (tirx.BufferStore, lambda node, found=stores: found.append(node)))
    pads = False
    for store in stores:
        value = store.value
        if isinstance(value, tvm.ir.TensorLoad):
            continue
        if not is_select(value) or not all(
            isinstance(arm, tvm.ir.TensorLoad | tirx.IntImm | tirx.FloatImm) for arm in value.args[1:]
        ):
            return False, False
        pads = True
    return bool(stores), pads


def fuse_input_padding() -> tvm.transform.Pass:
    """The Relax pass (between ``FuseOps`` and ``FuseTIR``) merging padding kernels into the
    convolutions that read them (module docstring)."""
    import tvm
    from tvm import relax, s_tir, tirx

    from .weight_fusion import _call_tir_targets, fuse_producers

    def kernels(mod: Any, func: Any) -> list[Any]:
        return [mod[mod.get_global_var(name)] for name in _call_tir_targets(func)]

    def pads_only(mod: Any, func: Any) -> bool:
        found = [is_data_movement(k) for k in kernels(mod, func) if isinstance(k, tirx.PrimFunc)]
        return bool(found) and all(moves for moves, _ in found) and any(pads for _, pads in found)

    def convolves(mod: Any, func: Any) -> bool:
        names: list[str] = []
        for kernel in kernels(mod, func):
            tvm_ffi.structural_walk(kernel.body, (s_tir.SBlock, lambda b, n=names: n.append(b.name_hint)))
        return any("conv2d" in name for name in names)

    @tvm.transform.module_pass(opt_level=0, name="EdgecFuseInputPadding")
    def fuse(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        producers = {
            gv.name_hint
            for gv, func in mod.functions.items()
            if isinstance(func, relax.Function)
            and func.attrs
            and "Primitive" in func.attrs
            and pads_only(mod, func)
        }
        return fuse_producers(
            mod, producers, lambda consumer, index: index == 0 and convolves(mod, consumer), "pad"
        )

    return fuse
