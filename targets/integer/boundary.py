"""The float/integer boundary: the graph's own quantize of a float tensor and dequantize of an
int8 tensor that a float consumer (or a graph output) needs.

``QuantizeLinear`` of a float tensor becomes ``edgec.IntegerQuantize``: ``clamp(rint(x / s) + z)``
with ``rint`` half to even, as ONNX. ``DequantizeLinear`` of an int8 activation becomes
``edgec.IntegerDequantize``: ``(q - z) · s``. Everything between them is integer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.rewrite import Op, Optional, Var
from edgec.targets.integer import qdq
from edgec.targets.integer.epilogue import clamp
from edgec.targets.integer.fixed_point import INT8_MAX, INT8_MIN
from edgec.targets.integer.kind import IntegerKind, attr_int
from edgec.targets.integer.qdq import Group, Refuse

__all__ = ["IntegerDequantize", "IntegerQuantize"]


class _Boundary(IntegerKind):
    """A Q or DQ of an activation, per tensor and int8: its scale and zero point as attributes."""

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        node = group.node
        params = qdq.qparams(node)
        if not params.per_tensor:
            raise Refuse(f"{qdq.label(node)} is per-channel; only per-tensor activations are lowered")
        if params.dtype != np.int8:
            raise Refuse(f"{qdq.label(node)} is {params.dtype}; only int8 activations are lowered")
        attrs = {"scale": float(params.scale.reshape(())), "zero_point": int(params.zero_point.reshape(()))}
        return [self.make(graph, node.name, node.op, [node.inputs[0]], group.output, attrs)]


class IntegerQuantize(_Boundary):
    """float32 → int8 at the graph's boundary (or after a float remainder)."""

    op_type: ClassVar[str] = "IntegerQuantize"
    float_ops: ClassVar[tuple[str, ...]] = ("QuantizeLinear",)
    kernel: ClassVar[str] = "quantize (float32 to int8)"
    patterns: ClassVar[tuple[Op, ...]] = (
        Op("QuantizeLinear", Var("x"), Var("scale"), Optional(Var("zero_point")), name="f"),
    )

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        scale = relax.const(np.float32(node.attrs["scale"]), "float32")
        shifted = relax.op.add(
            relax.op.round(relax.op.divide(args[0], scale)),
            relax.const(np.float32(attr_int(node, "zero_point")), "float32"),
        )
        return relax.op.astype(clamp(shifted, INT8_MIN, INT8_MAX, "float32"), "int8")

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        scaled = np.rint(args[0].astype(np.float32) / np.float32(node.attrs["scale"]))
        return np.clip(scaled + np.float32(attr_int(node, "zero_point")), INT8_MIN, INT8_MAX).astype(np.int8)


class IntegerDequantize(_Boundary):
    """int8 → float32 where a float consumer or a graph output needs the value."""

    op_type: ClassVar[str] = "IntegerDequantize"
    float_ops: ClassVar[tuple[str, ...]] = ("DequantizeLinear",)
    kernel: ClassVar[str] = "dequantize (int8 to float32)"
    patterns: ClassVar[tuple[Op, ...]] = (
        Op("DequantizeLinear", Var("x"), Var("scale"), Optional(Var("zero_point")), name="f"),
    )

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        if isinstance(group.node.inputs[0], gs.Constant):
            raise Refuse(f"{qdq.label(group.node)} dequantizes a constant (a weight), not an activation")
        return super().plan(group, graph)

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        centred = relax.op.subtract(
            relax.op.astype(args[0], "int32"), relax.const(attr_int(node, "zero_point"), "int32")
        )
        scale = relax.const(np.float32(node.attrs["scale"]), "float32")
        return relax.op.multiply(relax.op.astype(centred, "float32"), scale)

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        centred = args[0].astype(np.int32) - np.int32(attr_int(node, "zero_point"))
        return centred.astype(np.float32) * np.float32(node.attrs["scale"])
