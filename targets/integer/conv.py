"""Integer convolution (``Conv``: 2-D, depthwise, grouped, and 1-D as 2-D with unit height).

``DQ(x_q), DQ(w_q) [, DQ(b_q)] → Conv [→ Relu | Clip] → Q`` becomes ``edgec.IntegerConv``::

    acc[c]  = Σ x_q · w_q[c]  +  (b_q[c] - z_x · Σ w_q[c])          int8xint8 → int32, padding = z_x
    y_q     = clamp(z_y + requantize(acc[c], M[c]), lo, hi)          int8,  M[c] = s_x · s_w[c] / s_y

Weights are symmetric (``z_w = 0``); the input zero-point term is folded into the bias, and spatial
padding is done explicitly with the value ``z_x``, which is what real zero quantizes to. A 1-D
convolution (``[N, C, L]``, a keyword-spotting front end) is stored as a 2-D one over ``[N, C, 1, L]``:
weight ``[O, I, 1, K]``, pads ``(0, begin, 0, end)``; the kernel inserts and removes the unit axis.
A ``channel_pad`` attribute (``pad-channels``) says the weight has that many extra zero input
channels: the input gets as many channels of ``z_x``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.targets.integer import qdq
from edgec.targets.integer.arith import check_int32, conv_sum, pad
from edgec.targets.integer.epilogue import channel_const, emit_finish, finish
from edgec.targets.integer.kind import attr_int
from edgec.targets.integer.qdq import Group, Refuse
from edgec.targets.integer.weighted import WeightedKind

_AUTO_PAD_OK = ("NOTSET", "VALID", b"NOTSET", b"VALID")


def _layout_2d(node: gs.Node, rank: int) -> dict[str, list[int]]:
    """strides, pads (top, left, bottom, right) and dilations of a 1-D or 2-D Conv, as 2-D."""
    spatial = rank - 2
    strides = list(node.attrs.get("strides", [1] * spatial))
    pads = list(node.attrs.get("pads", [0] * 2 * spatial))
    dilations = list(node.attrs.get("dilations", [1] * spatial))
    if spatial == 1:
        return {"strides": [1, *strides], "pads": [0, pads[0], 0, pads[1]], "dilations": [1, *dilations]}
    return {"strides": strides, "pads": pads, "dilations": dilations}


class IntegerConv(WeightedKind):
    """int8 convolution with a per-channel requantization and a fused clamp."""

    op_type: ClassVar[str] = "IntegerConv"
    float_ops: ClassVar[tuple[str, ...]] = ("Conv",)
    kernel: ClassVar[str] = "integer conv2d"

    def refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(weight, gs.Constant):
            return "its weight is not a constant"
        if len(weight.shape) not in (3, 4):
            return f"a {len(weight.shape) - 2}-D convolution has no integer kernel (1-D and 2-D only)"
        if node.attrs.get("auto_pad", "NOTSET") not in _AUTO_PAD_OK:
            return f"auto_pad={node.attrs['auto_pad']!r} has no integer kernel (give explicit pads)"
        return None

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        node = group.node
        if node.attrs.get("auto_pad", "NOTSET") not in _AUTO_PAD_OK:
            raise Refuse(f"{qdq.label(node)} uses auto_pad={node.attrs['auto_pad']!r}")
        x = qdq.activation(node.inputs[0])
        w, sw, axis = qdq.weight(node.inputs[1])
        if w.ndim not in (3, 4):
            raise Refuse(f"{qdq.label(node)} is a {w.ndim - 2}-D convolution; only 1-D and 2-D are lowered")
        if axis not in (0, -1):
            raise Refuse(f"{qdq.label(node)} weights are quantized along axis {axis}, not the output channel")
        attrs = {**_layout_2d(node, w.ndim), "group": int(node.attrs.get("group", 1))}
        if w.ndim == 3:
            w = w[:, :, None, :]
        sums = w.astype(np.int64).reshape(w.shape[0], -1).sum(axis=1)
        return [self.weighted_node(graph, group, x, w, sw, sums, attrs)]

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        x = bb.normalize(args[0])
        one_dimensional = len(x.ty.shape) == 3
        if one_dimensional:
            x = relax.op.expand_dims(x, [2])
        pads = [int(p) for p in node.attrs["pads"]]
        strides = [int(s) for s in node.attrs["strides"]]
        dilations = [int(d) for d in node.attrs["dilations"]]
        zx = attr_int(node, "x_zero_point")
        channel_pad = int(node.attrs.get("channel_pad", 0))
        if channel_pad:  # pad-channels: the weight has zeros for these channels (any value would do)
            x = bb.normalize(relax.op.nn.pad(x, [0, 0, 0, channel_pad, 0, 0, 0, 0], pad_value=zx))
        sparse = self.sparse_weight(node)
        if sparse is not None:
            from edgec.targets.tvm.sparse_kernels import emit_sparse_conv2d

            acc = emit_sparse_conv2d(
                bb, x, sparse, strides, pads, dilations, attr_int(node, "group"), "int32", zx
            )
        else:
            padding: tuple[int, ...] = (pads[0], pads[1], pads[2], pads[3])
            if any(pads) and zx != 0:
                x = relax.op.nn.pad(x, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]], pad_value=zx)
                padding = (0, 0, 0, 0)
            acc = relax.op.nn.conv2d(
                x, relax.const(self.constant(node, "weight"), "int8"), strides=strides, padding=padding,
                dilation=dilations, groups=attr_int(node, "group"), out_dtype="int32",
            )  # fmt: skip
        acc = relax.op.add(acc, channel_const(self.constant(node, "bias"), "int32", 4, 1))
        mult, shift = self.constant(node, "multiplier"), self.constant(node, "shift")
        y = emit_finish(bb, acc, node, 4, 1, mult, shift)
        return bb.normalize(relax.op.squeeze(y, [2])) if one_dimensional else y

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        x = args[0]
        one_dimensional = x.ndim == 3
        if one_dimensional:
            x = x[:, :, None, :]
        zx = attr_int(node, "x_zero_point")
        channel_pad = int(node.attrs.get("channel_pad", 0))
        x = np.pad(x, [(0, 0), (0, channel_pad), (0, 0), (0, 0)], constant_values=zx)
        x = pad(x, node.attrs["pads"], zx)  # padding by z_x == real zero
        acc = conv_sum(
            x, self.weight(node), node.attrs["strides"], node.attrs["dilations"],
            attr_int(node, "group"),
        )  # fmt: skip
        acc = acc + self.constant(node, "bias").astype(np.int64).reshape(1, -1, 1, 1)
        check_int32(acc, node.name)
        y = finish(acc, node, 1, self.constant(node, "multiplier"), self.constant(node, "shift"))
        return y[:, :, 0, :] if one_dimensional else y
