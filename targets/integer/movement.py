"""int8 data movement: ops that move or select values without arithmetic run on int8 directly.

``DQ → MaxPool | Reshape | Flatten | Transpose | Squeeze | Unsqueeze | Concat [→ Relu | Clip] → Q``
becomes the same standard ONNX op reading the int8 tensor (named after the float node), followed by
an :mod:`.rescale` when the input and output parameters differ (MaxPool commutes with the monotonic
rescale; a fused clamp is one); a Concat rescales each input at other parameters first. The TVM
frontend's own converters lower these ops for any dtype, so this kind has no Relax emission of its
own; its numpy reference runs them on int8. ``Identity`` and inference ``Dropout`` count as
movement for the quantize pass (the legalization removes them, see ``eliminate-identity``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.targets.integer import qdq
from edgec.targets.integer.arith import max_pool
from edgec.targets.integer.fixed_point import INT8_MAX, INT8_MIN
from edgec.targets.integer.kind import IntegerKind
from edgec.targets.integer.qdq import Group, Refuse
from edgec.targets.integer.rescale import IntegerRescale, needs_rescale

__all__ = ["Int8Movement"]

_RESCALE = IntegerRescale()


def _int8(graph: EdgeGraph, prefix: str, like: gs.Tensor) -> gs.Variable:
    return gs.Variable(graph.fresh_name(prefix), dtype=np.int8, shape=like.shape)


class Int8Movement(IntegerKind):
    """Standard ONNX data-movement ops on int8 tensors (plus rescales where parameters differ)."""

    float_ops: ClassVar[tuple[str, ...]] = (
        "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Identity",
        "Dropout",
    )  # fmt: skip
    kernel: ClassVar[str] = "int8 data movement"

    def refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        if node.op != "MaxPool":
            return None
        if len(node.attrs.get("kernel_shape", ())) not in (1, 2):
            return "only 1-D and 2-D MaxPool run on int8"
        if any(d != 1 for d in node.attrs.get("dilations", ())):
            return "a dilated MaxPool does not run on int8"
        return None

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        node = group.node
        if node.op == "Dropout":
            raise Refuse(f"{qdq.label(node)} is left to eliminate-identity (inference Dropout is a copy)")
        reason = self.refusal(node, graph)
        if reason:
            raise Refuse(f"{qdq.label(node)}: {reason}")
        if any(out.outputs for out in node.outputs[1:]):
            raise Refuse(f"{qdq.label(node)} has a second output that is used")
        out = (group.scale, group.zero_point)
        lo, hi = qdq.clamp_bounds(group.act, *out)
        concat = node.op == "Concat"
        positions = range(len(node.inputs)) if concat else [0]
        # Everything that can refuse comes before the first new node (a node links itself into
        # the tensors it reads, so a half-made plan would leave phantom readers behind).
        sources = {position: qdq.activation(node.inputs[position]) for position in positions}
        for position, tensor in enumerate(node.inputs):
            if position not in sources and tensor.name and not isinstance(tensor, gs.Constant):
                raise Refuse(f"{qdq.label(node)} input '{tensor.name}' is neither int8 data nor a constant")
        emitted: list[gs.Node] = []
        inputs: list[gs.Tensor] = list(node.inputs)
        for position, x in sources.items():
            if concat and needs_rescale(x, *out, INT8_MIN, INT8_MAX):
                rescaled = _int8(graph, f"{node.name}_in{position}", node.inputs[position])
                name = f"{node.name}__rescale_in{position}"
                full = (INT8_MIN, INT8_MAX)
                emitted.append(_RESCALE.node(graph, name, node.op, x, rescaled, out, full, group.rounding))
                x = qdq.Activation(rescaled, *out)
            inputs[position] = x.tensor
        # A Concat's inputs now share the output's parameters; other ops keep their input's.
        moved = qdq.Activation(inputs[0], *out) if concat else sources[0]
        rescale = needs_rescale(moved, *out, lo, hi)
        output = _int8(graph, f"{node.name}_moved", group.output) if rescale else group.output
        emitted.append(
            gs.Node(node.op, name=node.name, attrs=dict(node.attrs), inputs=inputs, outputs=[output])
        )
        if rescale:
            source = qdq.Activation(output, moved.scale, moved.zero_point)
            name = f"{node.name}__rescale"
            emitted.append(
                _RESCALE.node(graph, name, node.op, source, group.output, out, (lo, hi), group.rounding)
            )
        return emitted

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        return run_movement(node, args)


def run_movement(node: gs.Node, args: list[Any]) -> np.ndarray:
    """A standard data-movement op in numpy (any dtype; the legal graph runs them on int8)."""
    attrs, op, x = node.attrs, node.op, args[0]
    if op == "MaxPool":
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1] * len(kernel)))
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        if len(kernel) == 1:  # 1-D as 2-D with unit height
            pooled = max_pool(x[:, :, None, :], [1, *kernel], [1, *strides], [0, pads[0], 0, pads[1]],
                              bool(attrs.get("ceil_mode", 0)))  # fmt: skip
            return pooled[:, :, 0, :]
        return max_pool(x, kernel, strides, pads, bool(attrs.get("ceil_mode", 0)))
    if op == "Reshape":
        shape = [int(d) for d in args[1]]
        if not attrs.get("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return x.reshape(shape)
    if op == "Flatten":
        axis = attrs.get("axis", 1) % max(x.ndim, 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op == "Transpose":
        return x.transpose(attrs.get("perm"))
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(a) for a in args[1]]
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
        out = x
        for axis in sorted(a % (x.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, axis)
        return out
    if op == "Concat":
        return np.concatenate([a for a in args if a is not None], axis=attrs["axis"])
    if op in ("Identity", "Dropout"):
        return x
    raise Refuse(f"{qdq.label(node)} is not a data-movement op")
