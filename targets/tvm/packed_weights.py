"""Packed weights in Relax: the run-time decoding of ``edgec.PackedDequantize`` nodes.

The ``pack-weights`` legalization (:mod:`edgec.targets.legalize.pack_weights`) replaces
``DequantizeLinear`` of INT4/UINT4 (opset 21), INT2/UINT2 (opset 25) and, where only
DequantizeLinear reads them, INT8/UINT8 initializers, ``Cast(to=FLOAT)`` of float16 weights and the
constant ``B`` of ``MatMulInteger`` by ``PackedDequantize`` nodes whose input is exactly the stored
bytes. This module emits their unpacking as Relax ops, so the module's constant is the packed bytes
(1/8 of float32 for 4 bits, 1/16 for 2 bits, 1/32 binary) and the weights are decoded at run time.

The bit layout, the unpacking arithmetic and a numpy reference of it are in :mod:`.packed_layout`.

Keeping it unpacked at run time: Relax's ``FoldConstant`` evaluates every ``call_tir`` whose
arguments are all constants, which would turn the whole chain back into a float32 weight. The
chain therefore starts with a byte copy of the packed constant (``edgec_packed_weights``, a TE
kernel) that also takes the model's first input as an argument it never reads: a data dependency
that keeps the constant folder away, costs nothing, and leaves a single ``main`` of ``call_tir``
kernels (which the runtime-free C emitter also needs). ``FuseOps`` fuses the copy, the unpack ops
and ``ConvertLayout``'s HWIO transpose into one kernel per weight (a gather: each float weight
reads its byte and shifts), placed just before the weight's consumer (:func:`.translate.just_in_time`).

Cost: no float weight exists when its one reader is a conv2d/matmul: :mod:`.weight_fusion` merges
the unpack kernel into the consumer's kernel and the CPU schedule rules inline the unpack into the
reduction (:func:`.schedules.inline_weight_decode`), so the kernel reads the packed bytes and decodes
each weight element where it multiplies it (a byte load, shifts, a convert and the scale). The digits
CNN on Cortex-M4 with weight-int4 needs 30 KB of flash instead of 78 KB and the same 14 KB arena as
fp32 (47 KB when each float weight was materialised there); on x86 it runs as fast as fp32. A weight
read by two ops, or by an op that is not a conv2d/matmul, keeps its own unpack kernel, which writes
the float weight into the arena just before its first reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .packed_layout import HALF_BITS, PackedWeight, blocked_shape, broadcast_form

if TYPE_CHECKING:
    import tvm

__all__ = ["constant_bytes", "emit_dequantize"]


# --------------------------------------------------------------------------------------------
# Relax
# --------------------------------------------------------------------------------------------


def _keep_at_run_time(bb: Any, packed: Any, anchor: Any) -> Any:
    """A copy of the packed bytes that also takes ``anchor`` (never read): see the module
    docstring; without an anchor the bytes are returned as they are."""
    if anchor is None:
        return packed
    from tvm import te

    def copy(data: Any, _anchor: Any) -> Any:
        return te.compute(data.shape, lambda i: data[i], name="edgec_packed_weights")

    return bb.emit_te(copy, packed, anchor, primfunc_name_hint="edgec_packed_weights")


def emit_dequantize(bb: Any, spec: PackedWeight, packed: Any, anchor: Any = None) -> Any:
    """Relax ops that unpack ``packed`` (``uint8[nbytes]``) and dequantize it to ``spec.shape``.

    Args:
        bb: The block builder.
        spec: The weight.
        packed: Its packed bytes (a Relax constant).
        anchor: A run-time tensor (a graph input) that keeps the chain from being constant-folded.

    Returns:
        The float weight (the scale's dtype).
    """
    from tvm import relax

    data = _keep_at_run_time(bb, packed, anchor)
    if spec.bits == HALF_BITS:
        return bb.normalize(relax.op.astype(relax.op.reshape(data, list(spec.shape)), "float32"))
    if spec.integer:
        stored = "int8" if spec.signed else "uint8"
        return bb.normalize(relax.op.reshape(relax.op.astype(data, stored), list(spec.shape)))
    bits, per_byte = spec.bits, spec.per_byte
    if bits == 1:
        right = np.arange(8, dtype=np.uint8)
        values = relax.op.right_shift(relax.op.expand_dims(data, [1]), relax.const(right, "uint8"))
        values = relax.op.astype(relax.op.bitwise_and(values, relax.const(np.uint8(1), "uint8")), "int8")
        values = relax.op.subtract(
            relax.op.left_shift(values, relax.const(np.int8(1), "int8")), relax.const(np.int8(1), "int8")
        )
    elif spec.signed:
        left = np.array([8 - bits * (k + 1) for k in range(per_byte)], np.int8)
        values = relax.op.expand_dims(relax.op.astype(data, "int8"), [1])
        values = relax.op.left_shift(values, relax.const(left, "int8"))
        values = relax.op.right_shift(values, relax.const(np.int8(8 - bits), "int8"))
    else:
        right = np.array([bits * k for k in range(per_byte)], np.uint8)
        values = relax.op.right_shift(relax.op.expand_dims(data, [1]), relax.const(right, "uint8"))
        values = relax.op.bitwise_and(values, relax.const(np.uint8((1 << bits) - 1), "uint8"))
    values = relax.op.reshape(values, [spec.nbytes * per_byte])
    if spec.nbytes * per_byte != spec.count:
        values = relax.op.strided_slice(values, axes=[0], begin=[0], end=[spec.count])
    weight = relax.op.astype(relax.op.reshape(values, list(spec.shape)), "float32")
    full_shape = list(spec.shape)
    if spec.block_size:
        assert spec.axis is not None
        split, padded = blocked_shape(spec)
        if padded != spec.shape[spec.axis]:
            widths = [0] * (2 * len(spec.shape))
            widths[2 * spec.axis + 1] = padded - spec.shape[spec.axis]
            weight = relax.op.nn.pad(weight, widths)
            full_shape[spec.axis] = padded
        weight = relax.op.reshape(weight, split)
    if spec.zero_point is not None:
        zero = broadcast_form(spec.zero_point.astype(np.float32), spec)
        weight = relax.op.subtract(weight, relax.const(zero, "float32"))
    scale = broadcast_form(spec.scale.astype(np.float32), spec)
    weight = relax.op.multiply(weight, relax.const(scale, "float32"))
    if spec.block_size:
        weight = relax.op.reshape(weight, full_shape)
        if full_shape != list(spec.shape):
            assert spec.axis is not None
            weight = relax.op.strided_slice(weight, axes=[spec.axis], begin=[0], end=[spec.shape[spec.axis]])
    if spec.scale.dtype != np.float32:
        weight = relax.op.astype(weight, str(spec.scale.dtype))
    return bb.normalize(weight)


def constant_bytes(mod: tvm.IRModule) -> dict[str, int]:
    """Bytes of the Relax constants in the module's Relax functions, by dtype (each constant
    counted once): what the artifact stores as weights."""
    import tvm
    from tvm import relax

    found: list[Any] = []

    @relax.expr_functor.visitor
    class Constants(relax.PyExprVisitor):
        def visit_generic_const_(self, op: Any) -> None:
            if isinstance(op.value, tvm.runtime.Tensor) and not any(op.same_as(f) for f in found):
                found.append(op)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            Constants().visit_expr(func)
    totals: dict[str, int] = {}
    for op in found:
        array = op.value.numpy()
        totals[str(array.dtype)] = totals.get(str(array.dtype), 0) + int(array.nbytes)
    return totals
