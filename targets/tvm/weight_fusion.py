"""Fuse each packed weight's decode into the kernel that consumes it, so no float weight is stored.

:mod:`.packed_weights` emits a packed weight as a chain of Relax ops behind a byte-copy anchor
kernel (``edgec_packed_weights``): copy, shifts, cast, zero point, scale, and any layout transpose.
``FuseOps`` makes that chain one kernel, but TVM's graph partitioner never fuses an injective
producer into an ``kOutEWiseFusable`` consumer (conv2d, matmul): the conv is the group's anchor
and takes only element-wise *consumers*. So the decode kernel writes the whole float32 weight
into a tensor of ``main`` (the arena, on runtime-free targets) and the conv reads it back.

:func:`fuse_weight_decode` is a Relax pass for the gap between ``FuseOps`` and ``FuseTIR``. For
each call of a decode function (a ``Primitive`` function whose kernels include the anchor) whose
result has exactly one reader, and that reader is a conv2d/matmul kernel (a ``call_tir`` of an
``op_pattern == kOutEWiseFusable`` PrimFunc, or a fused function containing one), it builds one
``Primitive`` function holding both bodies: the decode's bindings, then the consumer's with the
weight parameter bound to the decoded value. ``FuseTIR`` then makes one PrimFunc of it that reads
the packed ``uint8`` buffer; the decode blocks are ordinary spatial blocks before the reduction,
which :func:`inline_weight_decode` (run before edgec's CPU schedule rules) inlines into it, so each
weight element is unpacked in registers where the reduction reads it: a byte load, shifts, a convert
and a multiply by its scale per multiply-accumulate, and no float weight buffer. The rules then see
a plain conv2d/matmul (plus epilogue) and tile it as they would a float one.

Left on the old path (a separate decode kernel, the float weight in ``main``): a decoded weight
read by two kernels or by the graph output, a kernel that reads two decoded weights, and readers
that are not a reduction kernel (an injective reader such as a ``Gather`` of an embedding table is
already in the decode's own ``FuseOps`` group).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm

__all__ = [
    "ANCHOR_KERNEL",
    "fuse_producers",
    "fuse_weight_decode",
    "inline_weight_decode",
    "inline_weight_decode_blocks",
    "zero_pipeline",
]

# The byte-copy kernel packed_weights._keep_at_run_time emits (its primfunc_name_hint).
ANCHOR_KERNEL = "edgec_packed_weights"
# tvm/relax/op_attr_types.h: OpPatternKind::kOutEWiseFusable (conv2d, matmul, dense).
_OUT_ELEMWISE_FUSABLE = 4


def _call_tir_targets(func: Any) -> list[str]:
    """Names of the PrimFuncs a Primitive Relax function calls through ``call_tir``, in order."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    names = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                names.append(value.args[0].name_hint)
    return names


def _is_decode(mod: Any, gv: Any) -> bool:
    from tvm import relax

    func = mod[gv]
    if not isinstance(func, relax.Function) or not func.attrs or "Primitive" not in func.attrs:
        return False
    return any(name.startswith(ANCHOR_KERNEL) for name in _call_tir_targets(func))


def _is_reduction_kernel(mod: Any, name: str) -> bool:
    from tvm import tirx

    func = mod[mod.get_global_var(name)]
    pattern = func.attrs.get("op_pattern") if isinstance(func, tirx.PrimFunc) and func.attrs else None
    return pattern is not None and int(pattern) == _OUT_ELEMWISE_FUSABLE


def _uses(func: Any) -> dict[Any, int]:
    """How often each Relax variable is read in ``func`` (its bindings and its result)."""
    from tvm import relax

    counts: dict[Any, int] = {}

    @relax.expr_functor.visitor
    class Counter(relax.PyExprVisitor):
        def visit_var_(self, op: Any) -> None:
            counts[op] = counts.get(op, 0) + 1

        def visit_dataflow_var_(self, op: Any) -> None:
            counts[op] = counts.get(op, 0) + 1

    Counter().visit_expr(func)
    return counts


def _as_function(mod: Any, call: Any) -> Any | None:
    """The consumer as a Primitive Relax function: itself for a call of a fused function, a
    one-binding wrapper for a bare ``call_tir`` of a conv2d/matmul kernel; ``None`` for any other."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    if isinstance(call.op, relax.GlobalVar):
        func = mod[call.op]
        if not isinstance(func, relax.Function) or not func.attrs or "Primitive" not in func.attrs:
            return None
        if not any(_is_reduction_kernel(mod, name) for name in _call_tir_targets(func)):
            return None
        return func
    if not call.op.same_as(call_tir) or not _is_reduction_kernel(mod, call.args[0].name_hint):
        return None
    if len(call.args) != 2 or not isinstance(call.args[1], relax.Tuple):
        return None  # call_tir with symbolic-shape arguments: not what FuseOps leaves for a conv
    params = [relax.Var(f"param_{i}", arg.ty) for i, arg in enumerate(call.args[1].fields)]
    result = relax.Var("gv", call.ty)
    inner = relax.Call(call.op, [call.args[0], relax.Tuple(params)], call.attrs, call.ty_args)
    body = relax.SeqExpr([relax.DataflowBlock([relax.VarBinding(result, inner)])], result)
    return relax.Function(params, body, call.ty).with_attr("Primitive", True)


def _merge(decode: Any, consumer: Any, weight_index: int) -> Any:
    """One Primitive function: ``decode``'s bindings, then ``consumer``'s with its parameter
    ``weight_index`` bound to the decoded weight. Parameters: decode's, then the consumer's others."""
    from tvm import relax

    weight = consumer.params[weight_index]
    # The decode's result is a function output (a non-dataflow Var); inside the merged block it is
    # an intermediate, so it becomes a DataflowVar (FuseTIR allocates it as a TIR buffer).
    decoded = relax.DataflowVar(decode.body.body.name, decode.body.body.ty)
    decode_bindings = []
    for block in decode.body.blocks:
        for binding in block.bindings:
            var = decoded if binding.var.same_as(decode.body.body) else binding.var
            decode_bindings.append(relax.VarBinding(var, binding.value))
    bound = consumer.bind_params({weight: decoded})
    consumer_bindings = [b for block in bound.body.blocks for b in block.bindings]
    params = list(decode.params) + [p for i, p in enumerate(consumer.params) if i != weight_index]
    body = relax.SeqExpr([relax.DataflowBlock(decode_bindings + consumer_bindings)], bound.body.body)
    return relax.Function(params, body, consumer.ret_ty).with_attr("Primitive", True)


def fuse_weight_decode() -> tvm.transform.Pass:
    """The Relax pass (between ``FuseOps`` and ``FuseTIR``) described in the module docstring.

    Returns:
        A module pass; modules without packed weights pass through unchanged.
    """
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EdgecFuseWeightDecode")
    def fuse(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        decoders = {gv.name_hint for gv in mod.get_global_vars() if _is_decode(mod, gv)}
        return fuse_producers(mod, decoders, lambda consumer, index: True, ANCHOR_KERNEL)

    return fuse


def fuse_producers(mod: Any, producers: set[str], accepts: Callable[[Any, int], bool], suffix: str) -> Any:
    """Each call of a ``producers`` function whose result one reduction kernel alone reads merged
    into that kernel's function (the producer's bindings first, its result bound to the consumer's
    parameter); ``accepts(consumer function, parameter index)`` may decline a pair. A merged
    kernel is named after its consumer plus ``suffix``.

    Returns:
        The module (the same object when nothing merged).
    """
    from tvm import relax

    if not producers:
        return mod
    mod = mod.clone()
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and not (func.attrs and "Primitive" in func.attrs):
            mod = _fuse_in(mod, gv, producers, accepts, suffix)
    return relax.transform.DeadCodeElimination()(mod)


def _fuse_in(mod: Any, gv: Any, producers: set[str], accepts: Callable[[Any, int], bool], suffix: str) -> Any:
    """Merge producer/consumer pairs in the dataflow blocks of ``mod[gv]``."""
    from tvm import relax

    func = mod[gv]
    uses = _uses(func)
    produced: dict[Any, Any] = {}  # producer result var -> its call
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (
                isinstance(block, relax.DataflowBlock)
                and isinstance(value, relax.Call)
                and isinstance(value.op, relax.GlobalVar)
                and value.op.name_hint in producers
                and uses.get(binding.var, 0) == 1
            ):
                produced[binding.var] = value
    merged_away: set[Any] = set()
    replaced: dict[Any, Any] = {}  # consumer var -> merged call
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            continue
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call):
                continue
            args = list(call.args[1].fields) if _is_call_tir(call) else list(call.args)
            hits = [i for i, a in enumerate(args) if a in produced]
            if len(hits) != 1:
                continue  # no produced input, or two (x @ w of two constants): left as they are
            consumer = _as_function(mod, call)
            if consumer is None or not accepts(consumer, hits[0]):
                continue
            weight_var = args[hits[0]]
            producer_call = produced[weight_var]
            merged = _merge(mod[producer_call.op], consumer, hits[0])
            name = f"{_kernel_name(call)}_{suffix}"
            builder = relax.BlockBuilder(mod)
            merged_gv = builder.add_func(merged, name)
            mod = builder.get()
            others = [a for i, a in enumerate(args) if i != hits[0]]
            replaced[binding.var] = relax.Call(merged_gv, list(producer_call.args) + others)
            merged_away.add(weight_var)
    if not replaced:
        return mod
    blocks = []
    for block in func.body.blocks:
        bindings = []
        for binding in block.bindings:
            if binding.var in merged_away:
                continue
            if binding.var in replaced:
                binding = relax.VarBinding(binding.var, replaced[binding.var])
            bindings.append(binding)
        blocks.append(type(block)(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    mod[gv] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    return mod


def _is_call_tir(call: Any) -> bool:
    import tvm

    return call.op.same_as(tvm.ir.Op.get("relax.call_tir"))


def _kernel_name(call: Any) -> str:
    return call.args[0].name_hint if _is_call_tir(call) else call.op.name_hint


def zero_pipeline(memory_first: bool = False) -> tvm.transform.Pass:
    """Relax's ``zero`` pipeline (TVM 0.27, ``relax/pipeline.py``) with :func:`fuse_weight_decode`
    between ``FuseOps`` and ``FuseTIR`` (and, ``memory_first``, the merge of padding kernels into
    their convolutions, :func:`.fused_kernels.fuse_input_padding`); a current MetaSchedule
    database is applied as there."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from .fused_kernels import fuse_input_padding

    @tvm.transform.module_pass(opt_level=0, name="EdgecZeroPipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                *([fuse_input_padding()] if memory_first else []),
                fuse_weight_decode(),
                relax.transform.FuseTIR(),
            ]
        )(mod)
        if ms.Database.current():
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        return mod

    return pipeline


# --------------------------------------------------------------------------------------------
# TIR: the decode blocks of a fused kernel, inlined into its reduction
# --------------------------------------------------------------------------------------------


def inline_weight_decode_blocks(sch: Any) -> bool:
    """Inline a packed weight's decode chain into the reduction that reads it.

    The chain is the anchor block (the byte copy) and its transitive spatial consumers: shifts,
    casts, reshapes, zero point, scale and layout transpose; it stops at the first block with a
    reduction axis (the conv2d/matmul). Inlined, the reduction reads the packed buffer itself.

    Args:
        sch: A ``tvm.s_tir.Schedule`` of one PrimFunc.

    Returns:
        Whether there was a chain (and it is now inlined).

    Raises:
        The schedule's error when a block cannot be inlined (the schedule is then partly changed).
    """
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    chain = {name for name in names if name.startswith(ANCHOR_KERNEL)}
    if not chain:
        return False
    frontier = [sch.get_sblock(name) for name in chain]
    while frontier:
        for consumer in sch.get_consumers(frontier.pop()):
            block = sch.get(consumer)
            if block.name_hint not in chain and all(int(iv.iter_type) == 0 for iv in block.iter_vars):
                chain.add(block.name_hint)  # iter_type 0: tirx.IterVar.DataPar (spatial)
                frontier.append(consumer)
    # In program order, so that each block is inlined into a consumer that is still plain.
    for name in (n for n in names if n in chain):
        sch.compute_inline(sch.get_sblock(name))
    return True


def inline_weight_decode() -> tvm.transform.Pass:
    """A module pass: :func:`inline_weight_decode_blocks` on every not yet scheduled PrimFunc.

    It runs before the schedule rules (and would before tuning) so that every rule sees a plain
    conv2d/matmul. A kernel whose chain TVM refuses to inline is left whole: it still runs, with
    the float weight in a buffer of its own (a workspace), and the rules schedule it as they can.
    """
    import tvm
    from tvm import s_tir, tirx

    # TVM 0.27 FFI errors are RuntimeError subclasses (ScheduleError) or ValueError/TypeError.
    refused = (RuntimeError, ValueError, TypeError, IndexError)

    @tvm.transform.module_pass(opt_level=0, name="EdgecInlineWeightDecode")
    def inline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
                continue
            sch = s_tir.Schedule(func)
            try:
                if inline_weight_decode_blocks(sch):
                    updates[gv] = sch.mod["main"]
            except refused:
                continue
        if not updates:
            return mod
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return inline
