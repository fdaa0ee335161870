"""The base of the kinds with an int8 weight (convolution, matrix product): one requantization
per output channel of ``acc = Σ x_q · w_q + (b_q - z_x · Σ w_q)``, ``M[c] = s_x · s_w[c] / s_y``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.targets.integer import qdq
from edgec.targets.integer.fixed_point import INT32_MAX, INT32_MIN, quantize_multiplier
from edgec.targets.integer.kind import IntegerKind
from edgec.targets.integer.qdq import Activation, Group, Refuse
from edgec.targets.tvm.sparse_layout import Encoded, decode, sparse_producer, spec_of

__all__ = ["WeightedKind"]


class WeightedKind(IntegerKind):
    """An integer kind whose node reads an int8 weight, an int32 bias and per-channel multipliers."""

    constants: ClassVar[tuple[str, ...]] = ("weight", "bias", "multiplier", "shift")

    def weighted_node(
        self,
        graph: EdgeGraph,
        group: Group,
        x: Activation,
        weight: np.ndarray,
        scales: np.ndarray,
        weight_sums: np.ndarray,
        attrs: dict[str, Any],
    ) -> gs.Node:
        """The legal node of ``group``: ``weight`` in the kernel's layout, ``scales`` per output
        channel (or one), ``weight_sums`` = Σ w_q per output channel (for the ``z_x`` term)."""
        node = group.node
        channels = weight_sums.size
        acc_scale = np.float64(x.scale) * np.broadcast_to(scales, (channels,))
        bias_tensor = node.inputs[2] if node.op in ("Conv", "Gemm") and len(node.inputs) > 2 else None
        bias = qdq.bias(bias_tensor, acc_scale, channels) - x.zero_point * weight_sums
        if np.any(bias < INT32_MIN) or np.any(bias > INT32_MAX):
            raise Refuse(f"{qdq.label(node)} bias does not fit int32")
        lo, hi = qdq.clamp_bounds(group.act, group.scale, group.zero_point)
        mult, shift = quantize_multiplier(acc_scale / group.scale)
        attrs = {
            **attrs,
            "x_zero_point": x.zero_point,
            "y_zero_point": group.zero_point,
            "lo": lo,
            "hi": hi,
            "rounding": group.rounding,
        }
        constants = {
            "weight": np.ascontiguousarray(weight.astype(np.int8)),
            "bias": bias.astype(np.int32),
            "multiplier": mult.astype(np.int32),
            "shift": shift.astype(np.int32),
        }
        return self.make(graph, node.name, node.op, [x.tensor], group.output, attrs, constants)

    def weights(self, node: gs.Node) -> str:
        return "int8"

    def sparse_weight(self, node: gs.Node) -> Encoded | None:
        """The weight as the ``sparse-weights`` legalization stored it, ``None`` when dense."""
        producer = sparse_producer(node.inputs[self.data_inputs])
        return spec_of(producer) if producer is not None else None

    def weight(self, node: gs.Node) -> np.ndarray:
        """The dense int8 weight (decoded when it is stored sparse)."""
        encoded = self.sparse_weight(node)
        if encoded is None:
            return self.constant(node, "weight")
        return decode(encoded.spec, encoded.values, encoded.index)
