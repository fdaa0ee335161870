"""The storage of packed weights: their bit layout, the unpacking arithmetic, a numpy reference,
and the ``edgec.PackedDequantize`` node of the legal graph that carries them.

The ``pack-weights`` legalization (:mod:`edgec.targets.legalize.pack_weights`) writes packed weights
as :func:`packed_node`; :mod:`.packed_weights` emits their run-time decoding; this module says
what the bytes mean. The node is ``PackedDequantize(bytes: uint8[nbytes], scale[, zero_point])``
with the :class:`PackedWeight` fields as attributes (``axis`` -1 for per-tensor).

Bit layout (the ONNX one, ``onnx.numpy_helper``/``onnx.helper.pack_float32_to_4bit``): the tensor
is flattened in row-major order and element ``e[i]`` goes to byte ``i // n`` at bit ``b·(i % n)``,
``b`` the bit width and ``n = 8 / b`` the elements per byte, as its two's-complement low ``b``
bits; the last byte is padded with zero bits::

    int4/uint4:  byte[j] = e[2j]      | e[2j+1] << 4                                 (low nibble first)
    int2/uint2:  byte[j] = e[4j]      | e[4j+1] << 2 | e[4j+2] << 4 | e[4j+3] << 6

Binary weights (``quantize{scheme=weight-binary}``) arrive as INT2 tensors whose values are all
``±1`` with a zero zero point; they are repacked at one bit per weight (``b = 1``, eight per byte,
bit ``1`` for ``+1``), so the artifact holds 1/32 of float32::

    binary:    byte[j] = Σ_k [e[8j+k] = +1] << k

Unpacking slot ``k`` (``0 ≤ k < n``) of byte ``x``::

    signed:    (int8(x) << (8 - b·(k+1))) >> (8 - b)       (arithmetic shift right sign-extends)
    unsigned:  (x >> (b·k)) & (2^b - 1)
    binary:    2·((x >> k) & 1) - 1

then ``w = (float(e) - zero_point) · scale``: ``scale`` per tensor, per channel along ``axis``, or
per block of ``block_size`` consecutive elements along ``axis`` (the scale tensor then has the
weight's rank with ``ceil(shape[axis] / block_size)`` along ``axis``), as ``DequantizeLinear``
defines it. Arithmetic after unpacking is float32, so results match onnxruntime to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError

if TYPE_CHECKING:
    from edgec.ir import EdgeGraph

__all__ = [
    "HALF_BITS",
    "PACKED_DOMAIN",
    "PACKED_OP",
    "PackedWeight",
    "blocked_shape",
    "broadcast_form",
    "dequantize",
    "pack",
    "packed_node",
    "spec_of",
    "unpack",
]

PACKED_OP = "PackedDequantize"
PACKED_DOMAIN = "edgec"

# fp16 weight storage (``quantize{scheme=fp16}``: a float16 initializer read through
# ``Cast(to=FLOAT)``) takes the path too, as 16-bit "packed" weights: FoldConstant would otherwise
# fold the Cast and store float32.
HALF_BITS = 16


@dataclass(frozen=True)
class PackedWeight:
    """One packed ``DequantizeLinear`` on a constant: what the Relax emitter needs.

    Attributes:
        name: The DequantizeLinear node (for messages).
        bits: 8, 4, 2, or 1 (binary: ``±1`` weights of an INT2 tensor, one bit each); 16 for a
            float16 weight behind ``Cast(to=FLOAT)`` (stored as float16, no scale).
        signed: INT4/INT2 (True) or UINT4/UINT2; binary weights count as signed.
        shape: The weight's shape.
        axis: The quantization axis (normalised, non-negative); ``None`` for per-tensor.
        block_size: Elements per scale along ``axis`` (0: per-axis or per-tensor).
        scale: The scales, as in the model (float32 or float16).
        zero_point: The zero points as int64, or ``None`` when they are all zero.
        integer: The decoded tensor is the stored integers themselves (the int8/uint8 weight of a
            ``MatMulInteger``, which applies its own zero point): no cast, no scale.
    """

    name: str
    bits: int
    signed: bool
    shape: tuple[int, ...]
    axis: int | None
    block_size: int
    scale: np.ndarray
    zero_point: np.ndarray | None
    integer: bool = False

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        if self.bits >= 8:
            return self.count * self.bits // 8
        return -(-self.count // self.per_byte)


# --------------------------------------------------------------------------------------------
# numpy: the layout and a reference
# --------------------------------------------------------------------------------------------


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers into bytes with the ONNX layout (see the module docstring).

    Args:
        values: Integers that fit ``bits`` bits (signed or unsigned); for ``bits = 1``, ``±1``
            values (``+1`` becomes bit 1); any shape.
        bits: 4, 2 or 1.

    Returns:
        ``uint8`` array of ``ceil(values.size / (8 / bits))`` bytes.
    """
    if bits not in (1, 2, 4):
        raise EdgecError(f"only 4-, 2- and 1-bit values are packed, not {bits}-bit")
    per_byte = 8 // bits
    flat = np.asarray(values).astype(np.int64).reshape(-1)
    flat = (flat > 0).astype(np.int64) if bits == 1 else flat & ((1 << bits) - 1)
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, np.int64)
    padded[: flat.size] = flat
    slots = padded.reshape(-1, per_byte) << (bits * np.arange(per_byte, dtype=np.int64))
    return slots.sum(axis=1).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int, signed: bool, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` elements, sign-extended when ``signed``.

    Returns:
        ``int8`` (signed, binary) or ``uint8`` array of ``count`` elements.
    """
    per_byte = 8 // bits
    data = np.asarray(packed, np.uint8).reshape(-1, 1)
    if bits == 1:
        values = (((data >> np.arange(8, dtype=np.uint8)) & np.uint8(1)).astype(np.int8) << 1) - np.int8(1)
    elif signed:
        left = (8 - bits * (np.arange(per_byte) + 1)).astype(np.int8)
        values = (data.view(np.int8) << left) >> np.int8(8 - bits)
    else:
        values = (data >> (bits * np.arange(per_byte)).astype(np.uint8)) & np.uint8((1 << bits) - 1)
    return values.reshape(-1)[:count]


def broadcast_form(values: np.ndarray, spec: PackedWeight) -> np.ndarray:
    """Scale/zero point reshaped to broadcast against the weight (blocked: against the weight
    reshaped to ``shape[:axis] + [blocks, block_size] + shape[axis+1:]``)."""
    rank = len(spec.shape)
    if spec.axis is None:
        return values.reshape(())
    if spec.block_size:
        blocked = list(values.shape)
        blocked.insert(spec.axis + 1, 1)
        return values.reshape(blocked)
    shape = [1] * rank
    shape[spec.axis] = values.size
    return values.reshape(shape)


def blocked_shape(spec: PackedWeight) -> tuple[list[int], int]:
    """``(weight shape with the axis split into [blocks, block_size], padded axis length)``."""
    assert spec.axis is not None
    blocks = -(-spec.shape[spec.axis] // spec.block_size)
    split = list(spec.shape)
    split[spec.axis : spec.axis + 1] = [blocks, spec.block_size]
    return split, blocks * spec.block_size


def dequantize(spec: PackedWeight, packed: np.ndarray) -> np.ndarray:
    """numpy reference of the emitted Relax code: unpack, subtract the zero point, scale (the
    stored integers for a ``MatMulInteger`` weight, float32 for the others)."""
    if spec.bits == HALF_BITS:
        return np.asarray(packed, np.float16).reshape(spec.shape).astype(np.float32)
    if spec.integer:
        return np.asarray(packed, np.uint8).view(np.int8 if spec.signed else np.uint8).reshape(spec.shape)
    values = unpack(packed, spec.bits, spec.signed, spec.count).reshape(spec.shape).astype(np.float32)
    scale = spec.scale.astype(np.float32)
    zero = None if spec.zero_point is None else spec.zero_point.astype(np.float32)
    if spec.block_size:
        assert spec.axis is not None
        split, padded = blocked_shape(spec)
        widths = [(0, 0)] * len(spec.shape)
        widths[spec.axis] = (0, padded - spec.shape[spec.axis])
        values = np.pad(values, widths).reshape(split)
    if zero is not None:
        values = values - broadcast_form(zero, spec)
    values = values * broadcast_form(scale, spec)
    if spec.block_size:
        assert spec.axis is not None
        full = list(spec.shape)
        full[spec.axis] = blocked_shape(spec)[1]
        values = values.reshape(full)
        values = np.take(values, np.arange(spec.shape[spec.axis]), axis=spec.axis)
    return values.astype(scale.dtype)


# --------------------------------------------------------------------------------------------
# The legal graph's node
# --------------------------------------------------------------------------------------------


def packed_node(
    spec: PackedWeight, data: gs.Constant, output: gs.Variable, replaces: str, graph: EdgeGraph
) -> gs.Node:
    """``PackedDequantize(data, scale[, zero_point])`` writing ``output``, the spec as attributes."""
    inputs: list[gs.Tensor] = [data, graph.add_constant(f"{spec.name}_scale", np.asarray(spec.scale))]
    if spec.zero_point is not None:
        inputs.append(graph.add_constant(f"{spec.name}_zero_point", spec.zero_point.astype(np.int32)))
    attrs = {
        "bits": spec.bits,
        "signed": int(spec.signed),
        "shape": list(spec.shape),
        "axis": -1 if spec.axis is None else spec.axis,
        "block_size": spec.block_size,
        "integer": int(spec.integer),
        "replaces": replaces,
    }
    return gs.Node(
        PACKED_OP, name=spec.name, domain=PACKED_DOMAIN, attrs=attrs, inputs=inputs, outputs=[output]
    )


def spec_of(node: gs.Node) -> PackedWeight:
    """The :class:`PackedWeight` a ``PackedDequantize`` node describes."""
    attrs = node.attrs
    axis = int(attrs["axis"])
    zero_point = np.asarray(node.inputs[2].values).astype(np.int64) if len(node.inputs) > 2 else None
    return PackedWeight(
        name=node.name,
        bits=int(attrs["bits"]),
        signed=bool(attrs["signed"]),
        shape=tuple(int(d) for d in attrs["shape"]),
        axis=None if axis < 0 else axis,
        block_size=int(attrs["block_size"]),
        scale=np.asarray(node.inputs[1].values),
        zero_point=zero_point,
        integer=bool(attrs["integer"]),
    )


def packed_bytes(node: gs.Node) -> np.ndarray:
    """The stored bytes of a ``PackedDequantize`` node (its first input)."""
    return np.asarray(node.inputs[0].values)
