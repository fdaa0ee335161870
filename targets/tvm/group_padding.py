"""Convolutions computed on whole vectors of output channels (per group: ShuffleNet's).

A grouped NHWC/HWIO conv2d whose groups' output channels no ``lanes``-wide vector divides computes
each group on zero filters up to whole vectors, and a slice drops them afterwards. ShuffleNet's
grouped 1x1 convs have 34 and 68 output channels per group: the grouped-conv schedule, whose
channel tiles stay within a group, got 2- and 4-lane vectors out of them (15 and 29 GMAC/s on one
AVX-512 core, where whole vectors run at 100 and more).

The slice moves past what follows the conv channel by channel (the bias add and BN scale, with
their constants padded; ReLU, clips, sigmoid; an int8 conv's requantization: casts, multiplier,
shift), so those stay the conv's fused epilogue and the slice joins the next data movement
(ShuffleNet's channel shuffle, the residual add). An ungrouped conv is padded only when a few
channels (at most 1/8) are missing: SqueezeNet's 1000 classes, which as int8 took vpmaddwd
instead of vpdpbusd (1.18 -> 0.42 ms). The padded channels are computed from zero filters and
discarded, so the result is the same (bit for bit in int8).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .relax_rewrites import constant_array, rewrite_functions

__all__ = ["pad_group_channels"]

# Elementwise ops that act on each channel alone: they may run on the padded tensor.
_UNARY = {"relax.nn.relu", "relax.sigmoid", "relax.tanh", "relax.clip", "relax.astype"}
# Binary ones, with the value their constant operand gets in the padded channels.
_BINARY = {
    "relax.add": 0.0,
    "relax.subtract": 0.0,
    "relax.multiply": 0.0,
    "relax.maximum": 0.0,
    "relax.minimum": 0.0,
    "relax.divide": 1.0,
    "relax.right_shift": 0,  # an integer conv's requantization
}


def pad_group_channels(lanes: int) -> Any:
    """The Relax pass (``tvm.transform.Pass``) for vectors of ``lanes`` 32-bit lanes."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            # The slice var of each padded tensor's view -> (padded tensor, groups, per group, padded).
            self.views: dict[Any, tuple[Any, int, int, int]] = {}

        def view(self, padded: Any, groups: int, per_group: int, width: int) -> Any:
            """The real channels of ``padded`` (``groups`` x ``width``, ``per_group`` of them real)."""
            n, h, w, _ = (int(d) for d in padded.ty.shape)
            split = self.builder_.emit(relax.op.reshape(padded, (n, h, w, groups, width)))
            kept = self.builder_.emit(relax.op.strided_slice(split, axes=[4], begin=[0], end=[per_group]))
            self.views[kept] = (padded, groups, per_group, width)
            return relax.op.reshape(kept, (n, h, w, groups * per_group))

        def padded_source(self, expr: Any) -> tuple[Any, int, int, int] | None:
            """The padded tensor behind ``expr`` when ``expr`` is one of :meth:`view`'s results."""
            bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
            if isinstance(bound, relax.Call) and bound.op.name == "relax.reshape":
                return self.views.get(bound.args[0])
            return None

        def visit_call_(self, op: Any) -> Any:
            call = self.visit_expr_post_order(op)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            if call.op.name == "relax.nn.conv2d":
                return self.padded_conv(call)
            if call.op.name in _UNARY:
                return self.sunk(call, 0, None)
            if call.op.name in _BINARY:
                for index in (0, 1):
                    found = constant_array(call.args[1 - index])
                    if found is not None:
                        return self.sunk(call, index, found)
                return self.sunk_pair(call)
            return call

        def sunk_pair(self, call: Any) -> Any:
            """A binary op of two views with the same padding (HardSwish's and SiLU's ``x * f(x)``)
            on their padded tensors, then sliced."""
            sources = [self.padded_source(arg) for arg in call.args]
            if None in sources or sources[0][1:] != sources[1][1:]:
                return call
            _, groups, per_group, width = sources[0]
            out = self.builder_.emit(relax.Call(call.op, [s[0] for s in sources], call.attrs, call.ty_args))
            return self.view(out, groups, per_group, width)

        def sunk(self, call: Any, index: int, other: np.ndarray | None) -> Any:
            """``call`` applied to the padded tensor under its ``index``-th argument, then sliced."""
            source = self.padded_source(call.args[index])
            if source is None:
                return call
            padded, groups, per_group, width = source
            args = list(call.args)
            args[index] = padded
            if other is not None:
                if other.ndim and other.shape[-1] != 1:
                    if other.shape[-1] != groups * per_group or other.size != other.shape[-1]:
                        return call  # not one value per channel
                    grown = np.full((groups, width), _BINARY[call.op.name], other.dtype)
                    grown[:, :per_group] = other.reshape(groups, per_group)
                    other = grown.reshape((1,) * (other.ndim - 1) + (groups * width,))
                args[1 - index] = relax.const(other, str(other.dtype))  # int64 stays int64
            out = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
            return self.view(out, groups, per_group, width)

        def padded_conv(self, call: Any) -> Any:
            attrs, (x, weight) = call.attrs, call.args
            groups, w = int(attrs.groups), constant_array(weight)
            if attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO":
                return call
            if w is None or w.dtype not in (np.float32, np.int8):
                return call
            per_group = w.shape[3] // groups
            if per_group % lanes == 0 or (groups > 1 and w.shape[2] == 1):
                return call  # whole vectors already, or depthwise (its own schedule)
            width = -(-per_group // lanes) * lanes
            if groups == 1 and 8 * (width - per_group) > per_group:
                # An ungrouped conv tiles any channel count with narrower vectors; zero filters pay
                # only when few (SqueezeNet's 1000-class conv: 1008).
                return call
            grown = np.zeros((*w.shape[:3], groups, width), w.dtype)
            grown[..., :per_group] = w.reshape(*w.shape[:3], groups, per_group)
            conv = relax.op.nn.conv2d(
                x,
                relax.const(grown.reshape(*w.shape[:3], groups * width)),
                strides=attrs.strides,
                padding=attrs.padding,
                dilation=attrs.dilation,
                groups=groups,
                data_layout="NHWC",
                kernel_layout="HWIO",
                out_dtype=attrs.out_dtype,
            )
            return self.view(self.builder_.emit(conv), groups, per_group, width)

    @tvm.transform.module_pass(opt_level=0, name="EdgecPadGroupChannels")
    def rewrite(mod: Any, _ctx: Any) -> Any:
        return rewrite_functions(mod, Rewriter(mod))

    return rewrite
