"""The table of integer kernels: every kind, and the ``IntegerKernels`` the TVM targets declare.

One source of truth: the quantize pass asks :class:`IntegerKernelTable` (through
``PassContext.capabilities``) which float nodes will run as integers, the ``group-qdq``
legalization plans groups with the same kinds, and the lowering emits and reports them.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.targets.integer.boundary import IntegerDequantize, IntegerQuantize
from edgec.targets.integer.conv import IntegerConv
from edgec.targets.integer.conv_pool import IntegerConvAveragePool, IntegerConvMaxPool
from edgec.targets.integer.elementwise import IntegerAdd, IntegerMul
from edgec.targets.integer.kind import DOMAIN, IntegerKind
from edgec.targets.integer.matmul import IntegerMatMul
from edgec.targets.integer.movement import Int8Movement
from edgec.targets.integer.pool import IntegerAveragePool
from edgec.targets.integer.rescale import IntegerRescale

__all__ = ["BOUNDARY_KINDS", "FUSED_KINDS", "GROUP_KINDS", "KINDS", "IntegerKernelTable", "kind_of"]

# Kinds that replace a QDQ group ``... → f [→ act] → Q``, tried in this order on each Q.
GROUP_KINDS: tuple[IntegerKind, ...] = (
    IntegerConv(),
    IntegerMatMul(),
    IntegerAdd(),
    IntegerMul(),
    IntegerAveragePool(),
    Int8Movement(),
    IntegerRescale(),
)
# The float/integer boundary, planned once every group is: the Q and DQ that are left.
BOUNDARY_KINDS: tuple[IntegerKind, ...] = (IntegerQuantize(), IntegerDequantize())
# Kinds the memory legalization makes from integer nodes (``fuse-conv-pool``).
FUSED_KINDS: tuple[IntegerKind, ...] = (IntegerConvMaxPool(), IntegerConvAveragePool())
KINDS: tuple[IntegerKind, ...] = GROUP_KINDS + BOUNDARY_KINDS + FUSED_KINDS

_BY_OP_TYPE = {kind.op_type: kind for kind in KINDS if kind.op_type}


def kind_of(node: gs.Node) -> IntegerKind | None:
    """The kind of a legal-graph node (an ``edgec`` integer op), ``None`` for any other node."""
    if node.domain != DOMAIN:
        return None
    return _BY_OP_TYPE.get(node.op)


class IntegerKernelTable:
    """``edgec.capabilities.IntegerKernels`` built from the kinds: which float ops have an integer
    kernel, and each kind's own refusal for a given node."""

    def __init__(self, kinds: tuple[IntegerKind, ...] = KINDS) -> None:
        self._by_float_op: dict[str, IntegerKind] = {}
        for kind in kinds:
            for op in kind.float_ops:
                if op in self._by_float_op:
                    raise ValueError(f"two integer kinds claim {op}")
                self._by_float_op[op] = kind

    @property
    def ops(self) -> frozenset[str]:
        return frozenset(self._by_float_op)

    def refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        kind = self._by_float_op.get(node.op)
        if kind is None:
            return f"{node.op} has no integer kernel"
        return kind.refusal(node, graph)

    def __repr__(self) -> str:
        return f"IntegerKernelTable({sorted(self.ops)})"


INTEGER_KERNELS = IntegerKernelTable()
