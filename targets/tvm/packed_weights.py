"""Packed INT4/INT2 weights: stored packed in the artifact, unpacked by the generated code.

``quantize{scheme=weight-int4|weight-int2}`` writes ``DequantizeLinear(q, scale[, zero_point])``
with ``q`` a native ONNX INT4/UINT4 (opset 21) or INT2/UINT2 (opset 25) initializer. TVM's relax
importer cannot read those (``TensorCopyFromBytes: size mismatch``): it sees one numpy byte per
element. This module replaces each such node by an ``EdgecPackedDequantize`` node (domain
``edgec``) whose input is a ``uint8`` initializer holding exactly the ONNX bytes, and emits the
unpacking as Relax ops, so the module's constant is the packed bytes (1/8 of float32 for 4 bits,
1/16 for 2 bits) and the weights are unpacked at run time. In weight-only models, int8 weights
(``weight-int8``) and float16 weights behind ``Cast(to=FLOAT)`` (``fp16``) take the same path, so
the artifact stores them at 8 and 16 bits instead of the float32 that constant folding would make;
so does the uint8 weight of an ``int8-dynamic`` ``MatMulInteger`` (decoded to itself, where
folding would store the frontend's int32 cast of it).

The bit layout, the unpacking arithmetic and a numpy reference of it are in :mod:`.packed_layout`.

Keeping it unpacked at run time: Relax's ``FoldConstant`` evaluates every ``call_tir`` whose
arguments are all constants, which would turn the whole chain back into a float32 weight. The
chain therefore starts with a byte copy of the packed constant (``edgec_packed_weights``, a TE
kernel) that also takes the model's first input as an argument it never reads: a data dependency
that keeps the constant folder away, costs nothing, and leaves a single ``main`` of ``call_tir``
kernels (which the runtime-free C emitter also needs). ``FuseOps`` fuses the copy, the unpack ops
and ``ConvertLayout``'s HWIO transpose into one kernel per weight (a gather: each float weight
reads its byte and shifts), placed just before the weight's consumer (:func:`_just_in_time`).

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

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec.errors import EdgecError

from .packed_layout import HALF_BITS, PackedWeight, blocked_shape, broadcast_form, pack

if TYPE_CHECKING:
    import tvm

__all__ = [
    "PACKED_DOMAIN",
    "PACKED_OP",
    "constant_bytes",
    "emit_dequantize",
    "importer_class",
    "rewrite_packed_dequantize",
]

PACKED_OP = "EdgecPackedDequantize"
PACKED_DOMAIN = "edgec"

# ONNX element type → (bits, signed).
PACKED_TYPES: dict[int, tuple[int, bool]] = {
    TensorProto.INT4: (4, True),
    TensorProto.UINT4: (4, False),
    TensorProto.INT2: (2, True),
    TensorProto.UINT2: (2, False),
}
# Whole-byte weights take the same path in weight-only models: without it TVM folds their
# DequantizeLinear into a float32 constant and the artifact holds 4x the bytes.
BYTE_TYPES: dict[int, tuple[int, bool]] = {TensorProto.INT8: (8, True), TensorProto.UINT8: (8, False)}
_ALL_TYPES = {**PACKED_TYPES, **BYTE_TYPES}


# --------------------------------------------------------------------------------------------
# ONNX: DequantizeLinear(packed initializer) → EdgecPackedDequantize(uint8 initializer)
# --------------------------------------------------------------------------------------------


def _spec(node: onnx.NodeProto, weight: TensorProto, consts: dict[str, TensorProto]) -> PackedWeight:
    bits, signed = _ALL_TYPES[weight.data_type]
    label = node.name or node.output[0]
    shape = tuple(int(d) for d in weight.dims)
    if len(node.input) < 2 or node.input[1] not in consts:
        raise EdgecError(
            f"DequantizeLinear '{label}' of the packed {bits}-bit weight '{weight.name}' has a "
            "non-constant scale; edgec lowers packed weights only with constant scales"
        )
    scale = numpy_helper.to_array(consts[node.input[1]])
    if scale.dtype not in (np.float32, np.float16):
        raise EdgecError(f"DequantizeLinear '{label}' has a {scale.dtype} scale; use float32 or float16")
    zero_point = None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in consts:
            raise EdgecError(f"DequantizeLinear '{label}' has a non-constant zero point")
        zp = numpy_helper.to_array(consts[node.input[2]]).astype(np.int64)
        zero_point = zp if np.any(zp != 0) else None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    block_size = int(attrs.get("block_size", 0))
    rank = len(shape)
    axis: int | None = int(attrs.get("axis", 1))
    if scale.size == 1 and not block_size:
        axis = None
    else:
        assert axis is not None
        if not -rank <= axis < rank:
            raise EdgecError(f"DequantizeLinear '{label}' has axis {axis} for a rank-{rank} weight")
        axis %= rank
        if block_size:
            expected = list(shape)
            expected[axis] = -(-shape[axis] // block_size)
            if list(scale.shape) != expected:
                raise EdgecError(
                    f"DequantizeLinear '{label}': blocked scale shape {list(scale.shape)} is not "
                    f"{expected} (weight {list(shape)}, axis {axis}, block_size {block_size})"
                )
        elif scale.size != shape[axis]:
            raise EdgecError(
                f"DequantizeLinear '{label}': {scale.size} scales for axis {axis} of length {shape[axis]}"
            )
    if zero_point is not None:
        zero_point = zero_point.reshape(scale.shape)
    return PackedWeight(label, bits, signed, shape, axis, block_size, scale, zero_point)


def _packed_bytes(weight: TensorProto, spec: PackedWeight) -> np.ndarray:
    """The initializer's bytes in the ONNX layout (``raw_data`` as is, else re-packed)."""
    if spec.bits == HALF_BITS:
        return numpy_helper.to_array(weight).reshape(-1)
    if weight.raw_data and len(weight.raw_data) == spec.nbytes and spec.bits > 1:
        return np.frombuffer(weight.raw_data, np.uint8).copy()
    if spec.bits == 8:
        return numpy_helper.to_array(weight).reshape(-1).view(np.uint8).copy()
    return pack(numpy_helper.to_array(weight).astype(np.int64), spec.bits)


def _as_binary(spec: PackedWeight, weight: TensorProto) -> PackedWeight:
    """``spec`` at one bit per weight when the INT2 tensor holds only ``±1`` (binary weights)."""
    if spec.bits != 2 or not spec.signed or spec.zero_point is not None:
        return spec
    values = numpy_helper.to_array(weight).astype(np.int8)
    if not np.all(np.abs(values) == 1):
        return spec
    return dataclasses.replace(spec, bits=1)


def _half_spec(node: onnx.NodeProto, weight: TensorProto) -> PackedWeight | None:
    """The spec of ``Cast(to=FLOAT)`` on a float16 initializer, ``None`` for any other Cast."""
    to = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), None)
    if to != TensorProto.FLOAT or weight.data_type != TensorProto.FLOAT16:
        return None
    shape = tuple(int(d) for d in weight.dims)
    return PackedWeight(node.name or node.output[0], HALF_BITS, True, shape, None, 0, np.float32(1), None)


def _integer_spec(node: onnx.NodeProto, weight: TensorProto) -> PackedWeight:
    """The spec of the constant int8/uint8 ``B`` of a ``MatMulInteger``, kept as integers."""
    bits, signed = BYTE_TYPES[weight.data_type]
    shape = tuple(int(d) for d in weight.dims)
    label = f"{node.name or node.output[0]}_b"
    return PackedWeight(label, bits, signed, shape, None, 0, np.float32(1), None, integer=True)


def _just_in_time(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Move each ``EdgecPackedDequantize`` right before the first node that reads its output.

    Exporters put weight DequantizeLinear nodes first; emitted in that order, every unpacked
    float weight would be live from the start of the program to its consumer, and the memory
    planners would have to hold all of them at once (on the digits CNN for Cortex-M4: a 71 KB
    arena instead of 14 KB). Just in time, each is live only until its consumer has run. A node
    with subgraphs may read the weight implicitly, so it counts as a reader.
    """
    pending = {n.output[0]: n for n in nodes if n.op_type == PACKED_OP and n.domain == PACKED_DOMAIN}
    ordered: list[onnx.NodeProto] = []
    for node in nodes:
        if node.op_type == PACKED_OP and node.domain == PACKED_DOMAIN:
            continue
        has_subgraph = any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        )
        readers = list(pending) if has_subgraph else [i for i in node.input if i in pending]
        ordered.extend(pending.pop(name) for name in dict.fromkeys(readers))
        ordered.append(node)
    return ordered + list(pending.values())  # read only as graph outputs


def rewrite_packed_dequantize(model: onnx.ModelProto, whole_bytes: bool = False) -> list[PackedWeight]:
    """Replace ``DequantizeLinear`` of packed 4/2-bit initializers, in place (top-level graph).

    With ``whole_bytes``, int8/uint8 initializers that only DequantizeLinear nodes read (weight-only
    int8) take the same path, so they too stay integers in the artifact, and so do float16
    initializers that only ``Cast(to=FLOAT)`` nodes read (fp16 weight storage).

    Each such node becomes ``EdgecPackedDequantize(<weight>__packed)`` (domain ``edgec``,
    attribute ``index`` into the returned list) with a ``uint8`` initializer of the packed bytes;
    the packed initializers and zero points go away when nothing else reads them.

    Args:
        model: A model ready for the frontend (a copy: it is modified).

    Returns:
        The packed weights, in node order (empty when there are none).

    Raises:
        EdgecError: If a packed initializer is read by anything but a DequantizeLinear with
            constant parameters the emitter supports.
    """
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    packed = {name for name, t in consts.items() if t.data_type in PACKED_TYPES}
    if whole_bytes:
        readers: dict[str, set[str]] = {}
        for node in graph.node:
            for position, name in enumerate(node.input):
                weight = consts.get(name)
                if node.op_type == "DequantizeLinear" and position == 0:
                    readers.setdefault(name, set()).add("dq")
                elif node.op_type == "MatMulInteger" and position == 1:
                    readers.setdefault(name, set()).add("matmul-integer")
                elif node.op_type == "Cast" and weight is not None and _half_spec(node, weight):
                    readers.setdefault(name, set()).add("cast")
                else:
                    readers.setdefault(name, set()).add(node.op_type)
        packed |= {
            name
            for name, t in consts.items()
            if (t.data_type in BYTE_TYPES and readers.get(name) in ({"dq"}, {"matmul-integer"}))
            # Weights, not 1-D biases: a kernel that reads two decoded tensors keeps them in the
            # arena (weight_fusion fuses one per kernel), and a bias saves a few bytes at most.
            or (t.data_type == TensorProto.FLOAT16 and len(t.dims) >= 2 and readers.get(name) == {"cast"})
        }
    if not packed:
        return []
    specs: list[PackedWeight] = []
    nodes: list[onnx.NodeProto] = []
    added: list[TensorProto] = []
    for node in graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in packed:
            # The weight is decoded (copied, as integers) just before the product, which reads it.
            weight = consts[node.input[1]]
            spec = _integer_spec(node, weight)
            data = numpy_helper.from_array(_packed_bytes(weight, spec), f"{weight.name}__packed")
            decoded = f"{weight.name}__decoded_{len(specs)}"
            if data.name not in {t.name for t in added}:
                added.append(data)
            attrs = {"name": spec.name, "domain": PACKED_DOMAIN, "index": len(specs)}
            nodes.append(helper.make_node(PACKED_OP, [data.name], [decoded], **attrs))
            specs.append(spec)
            rewired = onnx.NodeProto()
            rewired.CopyFrom(node)
            rewired.input[1] = decoded
            nodes.append(rewired)
            continue
        if node.op_type not in ("DequantizeLinear", "Cast") or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        if not node.input or node.input[0] not in packed:
            nodes.append(node)
            continue
        weight = consts[node.input[0]]
        if node.op_type == "Cast":
            spec = _half_spec(node, weight)
            assert spec is not None  # only such Casts read the float16 weights chosen above
        else:
            spec = _as_binary(_spec(node, weight, consts), weight)
        data = numpy_helper.from_array(_packed_bytes(weight, spec), f"{weight.name}__packed")
        if data.name not in {t.name for t in added}:
            added.append(data)
        attrs = {"name": spec.name, "domain": PACKED_DOMAIN, "index": len(specs)}
        nodes.append(helper.make_node(PACKED_OP, [data.name], [node.output[0]], **attrs))
        specs.append(spec)
    read = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    still_packed = sorted(n for n in packed if n in read)
    if still_packed:
        raise EdgecError(
            f"the packed 4/2-bit tensors {still_packed} are read by nodes other than "
            "DequantizeLinear; edgec can only lower packed weights behind DequantizeLinear"
        )
    kept = [t for t in graph.initializer if t.name in read or t.name not in packed]
    del graph.node[:]
    graph.node.extend(_just_in_time(nodes))
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    return specs


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


@functools.cache
def importer_class() -> type:
    """TVM's ``ONNXGraphImporter`` with ``EdgecPackedDequantize`` nodes emitted by
    :func:`emit_dequantize`; subclasses add their own ``edgec`` ops through ``_edgec_convert``."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    class PackedWeightImporter(ONNXGraphImporter):
        edgec_ops: frozenset[str] = frozenset({PACKED_OP})

        def __init__(self, packed: list[PackedWeight], *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._edgec_packed = packed

        def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
            rest = onnx.GraphProto()
            rest.node.extend(n for n in graph.node if n.op_type not in self.edgec_ops)
            super()._check_for_unsupported_ops(rest)

        def _anchor(self) -> Any:
            from tvm import relax

            return next((v for v in self._inputs.values() if isinstance(v, relax.Var)), None)

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            if op_name == PACKED_OP:
                spec = self._edgec_packed[attrs["index"]]
                return emit_dequantize(self.bb, spec, inputs[0], self._anchor())
            return super()._convert_operator(op_name, inputs, attrs, opset)

    return PackedWeightImporter


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
