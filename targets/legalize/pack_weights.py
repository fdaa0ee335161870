"""``pack-weights``: constant weights keep their width in the artifact, decoded where they are read.

Three rules, each replacing the node that turns a narrow constant into the value its consumer reads
by an ``edgec.PackedDequantize`` whose input is a ``uint8`` constant of exactly the stored bytes
(the bit layout is :mod:`edgec.targets.tvm.packed_layout`'s):

* ``DequantizeLinear`` of an INT4/UINT4/INT2/UINT2 initializer (weight-int4/int2; an INT2 tensor of
  ``±1`` only is repacked at one bit: binary weights), or of an INT8/UINT8 one that only
  DequantizeLinear nodes read (weight-int8, and the weights of a float remainder node);
* ``Cast(to=FLOAT)`` of a float16 weight (``quantize{scheme=fp16}``; 2-D and larger: a bias saves a
  few bytes at most, and a kernel that reads two decoded tensors keeps them in the arena);
* the constant int8/uint8 ``B`` of a ``MatMulInteger`` (int8-dynamic), decoded to itself.

TVM's importer reads every initializer as one numpy byte per element and its constant folder would
fold a dequantized weight back into float32, so without this pass the artifact stores 4-bit weights
as float32. A sub-byte weight the rules must refuse (a non-constant scale, a reader that is not a
DequantizeLinear) cannot be lowered at all: the refusal is an error (collected by ``edgec check``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.errors import Fix, UnsupportedNodeError
from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var
from edgec.targets.tvm.packed_layout import HALF_BITS, PackedWeight, pack, packed_node

__all__ = ["PackWeights", "packing_rules"]

# numpy dtype name of a constant → (bits, signed); sub-byte types only load as ml_dtypes arrays.
SUB_BYTE = {"int4": (4, True), "uint4": (4, False), "int2": (2, True), "uint2": (2, False)}
WHOLE_BYTE = {"int8": (8, True), "uint8": (8, False)}


def _dtype(tensor: gs.Tensor) -> str:
    return np.dtype(tensor.dtype).name if tensor.dtype is not None else ""


def _readers(constant: gs.Tensor) -> set[tuple[str, int]]:
    """``(op, input position)`` of every node that reads ``constant``."""
    return {
        (node.op, position)
        for node in constant.outputs
        for position, tensor in enumerate(node.inputs)
        if tensor is constant
    }


def _constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def _dequantize_spec(match: Match) -> PackedWeight:
    """The spec of ``DequantizeLinear(q, scale[, zero_point])``; raises ``ValueError`` with the
    reason when it cannot be packed."""
    node, weight = match["dq"], match["q"]
    bits, signed = {**SUB_BYTE, **WHOLE_BYTE}[_dtype(weight)]
    shape = tuple(int(d) for d in weight.shape)
    scale = _constant(match["scale"])
    if scale is None:
        raise ValueError(f"its {bits}-bit weight '{weight.name}' has a non-constant scale")
    if scale.dtype not in (np.float32, np.float16):
        raise ValueError(f"its scale is {scale.dtype}; packed weights need float32 or float16 scales")
    zero_point = None
    if match["zero_point"] is not None:
        zero = _constant(match["zero_point"])
        if zero is None:
            raise ValueError("its zero point is not a constant")
        zero_point = zero.astype(np.int64) if np.any(zero.astype(np.int64) != 0) else None
    block_size = int(node.attrs.get("block_size", 0))
    rank = len(shape)
    axis: int | None = None
    if scale.size != 1 or block_size:
        axis = int(node.attrs.get("axis", 1))
        if not -rank <= axis < rank:
            raise ValueError(f"axis {axis} is out of range for a rank-{rank} weight")
        axis %= rank
        expected = list(shape)
        expected[axis] = -(-shape[axis] // block_size) if block_size else shape[axis]
        if block_size and list(scale.shape) != expected:
            raise ValueError(f"blocked scale shape {list(scale.shape)} is not {expected}")
        if not block_size and scale.size != shape[axis]:
            raise ValueError(f"{scale.size} scales for axis {axis} of length {shape[axis]}")
    if zero_point is not None:
        zero_point = zero_point.reshape(scale.shape)
    spec = PackedWeight(node.name, bits, signed, shape, axis, block_size, scale, zero_point)
    if bits == 2 and signed and zero_point is None and np.all(np.abs(_values(weight)) == 1):
        return PackedWeight(node.name, 1, True, shape, axis, block_size, scale, None)  # binary weights
    return spec


def _values(weight: gs.Constant) -> np.ndarray:
    return np.asarray(weight.values).astype(np.int64)


def packing_rules() -> RuleSet:
    """The three packing rules (the packed bytes of a weight read twice are made once)."""
    packed: dict[int, gs.Constant] = {}
    specs: dict[int, PackedWeight] = {}

    def packed_bytes(graph: EdgeGraph, weight: gs.Constant, spec: PackedWeight) -> gs.Constant:
        if id(weight) not in packed:
            if spec.bits == HALF_BITS:
                data = np.asarray(weight.values, np.float16).reshape(-1)
            elif spec.bits == 8:
                data = np.ascontiguousarray(np.asarray(weight.values)).reshape(-1).view(np.uint8)
            else:
                data = pack(_values(weight), spec.bits)
            packed[id(weight)] = graph.add_constant(f"{weight.name}__packed", data)
        return packed[id(weight)]

    def check_dequantize(match: Match, graph: EdgeGraph) -> str | None:
        weight = match["q"]
        dtype = _dtype(weight)
        if dtype not in SUB_BYTE and dtype not in WHOLE_BYTE:
            return f"its constant '{weight.name}' is {dtype or 'untyped'}, not an 8/4/2-bit weight"
        others = {op for op, position in _readers(weight) if (op, position) != ("DequantizeLinear", 0)}
        if others:
            return f"'{weight.name}' is also read by {sorted(others)}, not only by DequantizeLinear"
        try:
            specs[id(match["dq"])] = _dequantize_spec(match)
        except ValueError as why:
            return str(why)
        return None

    def dequantize(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        node, weight = match["dq"], match["q"]
        spec = specs.pop(id(node))
        return [
            packed_node(spec, packed_bytes(graph, weight, spec), match.outputs[0], "DequantizeLinear", graph)
        ]

    def check_cast(match: Match, graph: EdgeGraph) -> str | None:
        weight, node = match["w"], match["cast"]
        if node.attrs.get("to") != onnx.TensorProto.FLOAT or _dtype(weight) != "float16":
            return "not a float16 weight cast to float32"
        if len(weight.shape) < 2:
            return "a 1-D float16 constant is folded to float32 (a bias saves a few bytes at most)"
        if _readers(weight) != {("Cast", 0)}:
            return f"'{weight.name}' is also read by nodes other than Cast"
        return None

    def cast(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        node, weight = match["cast"], match["w"]
        shape = tuple(int(d) for d in weight.shape)
        spec = PackedWeight(node.name, HALF_BITS, True, shape, None, 0, np.float32(1), None)
        return [packed_node(spec, packed_bytes(graph, weight, spec), match.outputs[0], "Cast", graph)]

    def check_matmul_integer(match: Match, graph: EdgeGraph) -> str | None:
        weight = match["b"]
        if _dtype(weight) not in WHOLE_BYTE:
            return f"its constant B '{weight.name}' is not int8 or uint8"
        if _readers(weight) != {("MatMulInteger", 1)}:
            return f"'{weight.name}' is also read by nodes other than MatMulInteger"
        return None

    def matmul_integer(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        node, weight = match["mm"], match["b"]
        bits, signed = WHOLE_BYTE[_dtype(weight)]
        shape = tuple(int(d) for d in weight.shape)
        spec = PackedWeight(f"{node.name}_b", bits, signed, shape, None, 0, np.float32(1), None, integer=True)
        decoded = gs.Variable(
            graph.fresh_name(f"{weight.name}__decoded"), dtype=weight.dtype, shape=list(shape)
        )
        decode = packed_node(spec, packed_bytes(graph, weight, spec), decoded, "MatMulInteger", graph)
        inputs = [match["a"], decoded, match["a_zero"], match["b_zero"]]
        while inputs and inputs[-1] is None:
            inputs.pop()
        inputs = [tensor if tensor is not None else gs.Variable.empty() for tensor in inputs]
        product = gs.Node(
            "MatMulInteger", name=node.name, attrs=dict(node.attrs), inputs=inputs, outputs=match.outputs
        )
        return [decode, product]

    return RuleSet(
        [
            Rule(
                "dequantize",
                Op("DequantizeLinear", Const("q"), Var("scale"), Optional(Var("zero_point")), name="dq"),
                dequantize,
                check_dequantize,
            ),
            Rule("float16-cast", Op("Cast", Const("w"), name="cast"), cast, check_cast),
            Rule(
                "matmul-integer",
                Op(
                    "MatMulInteger",
                    Var("a"),
                    Const("b"),
                    Optional(Var("a_zero")),
                    Optional(Var("b_zero")),
                    name="mm",
                ),
                matmul_integer,
                check_matmul_integer,
            ),
        ]
    )


@register
@dataclass(frozen=True)
class PackWeights(Pass):
    """Keeps 8/4/2/1-bit and float16 weights at their width as edgec nodes decoded inside the kernels."""

    name: ClassVar[str] = "pack-weights"
    # The packed nodes are edgec's own ops (onnxruntime cannot run them); the decode is exact
    # (tests/targets/test_packed_weights.py compares it with onnxruntime's DequantizeLinear).
    lossless: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        report = packing_rules().apply(graph)
        stats: dict[str, Any] = {"packed": report.total, **report.stats()}
        reasons = {name: reason for _, name, reason in report.refused}
        # TVM reads a sub-byte initializer as one byte per element: one left unpacked cannot be
        # lowered at all.
        for constant in graph.constants():
            if _dtype(constant) not in SUB_BYTE:
                continue
            for node in list(constant.outputs):
                reason = reasons.get(node.name, f"{node.op} reads it; only DequantizeLinear of it is lowered")
                ctx.refuse(
                    UnsupportedNodeError(
                        node.name,
                        node.op,
                        f"its {_dtype(constant)} weight '{constant.name}' cannot be packed: {reason}",
                        Fix(
                            advice="read sub-byte weights only through DequantizeLinear with constant scales"
                        ),
                    )
                )
        return PassResult(graph, changed=report.total > 0, stats=stats)
