"""Integer rescale: an int8 tensor requantized to other parameters, with a clamp.

``DQ → Relu | Clip → Q`` (an activation between two quantized tensors) and ``DQ → Q`` (a change of
scale) become ``edgec.IntegerRescale``; data-movement groups whose input and output parameters
differ, and Concat inputs at another scale, use it too::

    y = clamp(z_y + requantize(q - z_x, s_x / s_y), lo, hi)

``lo``/``hi`` are ``[-128, 127]`` narrowed by a ``Relu`` to ``z_y`` or by ``Clip(a, b)`` to
``z_y + rint(a / s_y)``, ``z_y + rint(b / s_y)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.rewrite import Op, Optional, Var
from edgec.targets.integer import qdq
from edgec.targets.integer.epilogue import emit_finish, finish
from edgec.targets.integer.fixed_point import INT8_MAX, INT8_MIN, quantize_multiplier
from edgec.targets.integer.kind import IntegerKind, attr_int
from edgec.targets.integer.qdq import Activation, Group

__all__ = ["IntegerRescale", "needs_rescale"]


def needs_rescale(x: Activation, scale: float, zero_point: int, lo: int, hi: int) -> bool:
    """Whether moving ``x`` to ``(scale, zero_point)`` clamped to ``[lo, hi]`` changes any value."""
    same = np.float32(x.scale) == np.float32(scale) and x.zero_point == zero_point
    return not (same and lo == INT8_MIN and hi == INT8_MAX)


class IntegerRescale(IntegerKind):
    """int8 → int8 at other parameters: one requantization and a clamp."""

    op_type: ClassVar[str] = "IntegerRescale"
    float_ops: ClassVar[tuple[str, ...]] = ("Relu", "Clip")
    kernel: ClassVar[str] = "integer rescale"
    # What sits under the group's QuantizeLinear: an activation of a dequantized tensor, or the
    # DequantizeLinear itself (a change of scale). The clamp is the activation itself.
    patterns: ClassVar[tuple[Op, ...]] = (
        Op(("Relu", "Clip"), Var("x"), Optional(Var("min")), Optional(Var("max")), name="f"),
        Op("DequantizeLinear", Var("x"), Var("x_scale"), Optional(Var("x_zero_point")), name="f"),
    )
    fuses_activation: ClassVar[bool] = False

    def node(
        self,
        graph: EdgeGraph,
        name: str,
        replaces: str,
        x: Activation,
        output: gs.Variable,
        out: tuple[float, int],
        bounds: tuple[int, int],
        rounding: str,
    ) -> gs.Node:
        """A rescale of ``x`` to ``out = (scale, zero point)`` clamped to ``bounds``."""
        mult, shift = quantize_multiplier(x.scale / out[0])
        attrs = {
            "x_zero_point": x.zero_point, "y_zero_point": out[1], "multiplier": int(mult),
            "shift": int(shift), "lo": bounds[0], "hi": bounds[1], "rounding": rounding,
        }  # fmt: skip
        return self.make(graph, name, replaces, [x.tensor], output, attrs)

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        node = group.node
        if node.op == "DequantizeLinear":
            x = qdq.activation(node.outputs[0])
            bounds = qdq.clamp_bounds(None, group.scale, group.zero_point)
        else:
            x = qdq.activation(node.inputs[0])
            bounds = qdq.clamp_bounds(node, group.scale, group.zero_point)
        out = (group.scale, group.zero_point)
        return [self.node(graph, node.name, node.op, x, group.output, out, bounds, group.rounding)]

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        x = bb.normalize(args[0])
        rank = len(x.ty.shape)
        centred = relax.op.subtract(
            relax.op.astype(x, "int32"), relax.const(attr_int(node, "x_zero_point"), "int32")
        )
        return emit_finish(bb, centred, node, rank, 0, attr_int(node, "multiplier"), attr_int(node, "shift"))

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        centred = args[0].astype(np.int64) - attr_int(node, "x_zero_point")
        return finish(centred, node, 0, attr_int(node, "multiplier"), attr_int(node, "shift"))
