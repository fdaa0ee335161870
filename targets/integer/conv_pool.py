"""Integer convolution with its pooling fused: ``edgec.IntegerConvMaxPool`` and
``edgec.IntegerConvAveragePool`` (made by the ``fuse-conv-pool`` legalization).

The node computes exactly what ``IntegerConv → MaxPool`` (int8) or ``IntegerConv →
IntegerAveragePool`` compute: its two parts are those nodes' parameters (the conv's attributes and
constants as they were; the pool's attributes prefixed ``pool_``, its constants ``pool_divisor``,
``pool_multiplier``, ``pool_shift``), and both the Relax emission and the numpy reference run the
two kinds' own code on them (:meth:`FusedConvPool.parts`), so the fused node is bit-exact with the
unfused pair by construction. What changes is the kernel: the emission binds its result to a
variable named :data:`FUSED_MARKER` ``<anchors>_...``, and the Relax pass
:func:`edgec.targets.tvm.fused_kernels.outline_fused_kernels` makes the whole chain (input padding,
conv, requantization, pool) one kernel, which the schedules compute pooled pixel by pooled pixel:
the pre-pool tensor never exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.targets.integer.conv import IntegerConv
from edgec.targets.integer.kind import DOMAIN, IntegerKind, original_name
from edgec.targets.integer.movement import run_movement
from edgec.targets.integer.pool import IntegerAveragePool

__all__ = ["FUSED_MARKER", "FusedConvPool", "IntegerConvAveragePool", "IntegerConvMaxPool", "NodeView"]

# Name prefix of the Relax variable a fused node's emission binds its result to, followed by the
# number of reductions (anchors) in the chain: the outlining pass reads both from the name.
FUSED_MARKER = "edgec_fused"
_POOL = "pool_"
_CONV = IntegerConv()
_AVERAGE = IntegerAveragePool()


@dataclass(frozen=True)
class NodeView:
    """One part of a fused node, readable by that part's kind as if it were the original node
    (``name``, ``op``, ``attrs`` and ``inputs``: the data input's placeholder, then the constants)."""

    name: str
    op: str
    attrs: dict[str, Any]
    inputs: list[Any]


class FusedConvPool(IntegerKind):
    """The base of the fused kinds: a conv part (an ``IntegerConv``) and a pool part."""

    constants: ClassVar[tuple[str, ...]] = IntegerConv.constants
    pool_op: ClassVar[str] = ""
    # Reductions in the emitted chain: the conv, plus the average pool's window sum.
    anchors: ClassVar[int] = 1

    def fuse(self, graph: Any, conv: gs.Node, pool: gs.Node, output: gs.Variable) -> gs.Node:
        """The fused node of ``conv`` (an ``edgec.IntegerConv``) and ``pool`` (its only reader)."""
        attrs = {k: v for k, v in conv.attrs.items() if k != "replaces"}
        attrs.update({_POOL + k: v for k, v in pool.attrs.items() if k != "replaces"})
        attrs.update(replaces=str(conv.attrs["replaces"]), pool_node=pool.name, pool_op=self.pool_op)
        inputs = list(conv.inputs) + list(pool.inputs[1:])
        return gs.Node(
            self.op_type, name=conv.name, domain=DOMAIN, attrs=attrs, inputs=inputs, outputs=[output]
        )

    def parts(self, node: gs.Node) -> tuple[NodeView, NodeView]:
        """The conv part and the pool part of a fused node."""
        conv_attrs = {k: v for k, v in node.attrs.items() if not k.startswith(_POOL)}
        conv_attrs["replaces"] = node.attrs["replaces"]
        pool_attrs = {k[len(_POOL) :]: v for k, v in node.attrs.items() if k.startswith(_POOL)}
        pool_attrs["replaces"] = node.attrs["pool_op"]
        split = 1 + len(_CONV.constants)
        conv = NodeView(node.name, _CONV.op_type, conv_attrs, list(node.inputs[:split]))
        pool = NodeView(str(node.attrs["pool_node"]), self.pool_op, pool_attrs, [None, *node.inputs[split:]])
        return conv, pool

    def replaced(self, node: gs.Node) -> list[tuple[str, str]]:
        conv, pool = self.parts(node)
        return [(original_name(node), str(conv.attrs["replaces"])), (pool.name, self.pool_op)]

    def weights(self, node: gs.Node) -> str:
        return "int8"

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        conv, pool = self.parts(node)
        y = _CONV.emit(bb, conv, args)  # type: ignore[arg-type]
        name = f"{FUSED_MARKER}{self.anchors}_{''.join(c if c.isalnum() else '_' for c in node.name)}"
        return bb.emit(self.emit_pool(bb, pool, y), name_hint=name)

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        conv, pool = self.parts(node)
        y = _CONV.reference(conv, args)  # type: ignore[arg-type]
        return self.reference_pool(pool, y)

    def emit_pool(self, bb: Any, pool: NodeView, y: Any) -> Any:
        raise NotImplementedError

    def reference_pool(self, pool: NodeView, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class IntegerConvMaxPool(FusedConvPool):
    """int8 convolution and max pooling in one kernel (the pre-pool tensor never stored)."""

    op_type: ClassVar[str] = "IntegerConvMaxPool"
    kernel: ClassVar[str] = "integer conv2d + max pool, fused"
    pool_op: ClassVar[str] = "MaxPool"

    def emit_pool(self, bb: Any, pool: NodeView, y: Any) -> Any:
        from tvm import relax

        return relax.op.nn.max_pool2d(
            y, [int(k) for k in pool.attrs["kernel_shape"]], [int(s) for s in pool.attrs["strides"]]
        )

    def reference_pool(self, pool: NodeView, y: np.ndarray) -> np.ndarray:
        return run_movement(pool, [y])  # type: ignore[arg-type]


class IntegerConvAveragePool(FusedConvPool):
    """int8 convolution and average pooling in one kernel (the pre-pool tensor never stored)."""

    op_type: ClassVar[str] = "IntegerConvAveragePool"
    kernel: ClassVar[str] = "integer conv2d + average pool, fused"
    pool_op: ClassVar[str] = "AveragePool"
    anchors: ClassVar[int] = 2
    constants: ClassVar[tuple[str, ...]] = (
        *IntegerConv.constants,
        "pool_divisor",
        "pool_multiplier",
        "pool_shift",
    )

    def emit_pool(self, bb: Any, pool: NodeView, y: Any) -> Any:
        return _AVERAGE.emit(bb, pool, [y])  # type: ignore[arg-type]

    def reference_pool(self, pool: NodeView, y: np.ndarray) -> np.ndarray:
        return _AVERAGE.reference(pool, [y])  # type: ignore[arg-type]
