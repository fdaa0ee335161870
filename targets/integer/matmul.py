"""Integer matrix product (``Gemm``, ``MatMul`` with a constant 2-D weight).

``DQ(x_q), DQ(W_q) [, DQ(b_q)] → Gemm | MatMul [→ Relu | Clip] → Q`` becomes ``edgec.IntegerMatMul``::

    acc[n] = Σ_k x_q[k] · W_q[k, n]  +  (b_q[n] - z_x · Σ_k W_q[k, n])
    y_q    = clamp(z_y + requantize(acc[n], M[n]), lo, hi),   M[n] = s_x · s_w[n] / s_y

(``W`` is ``[K, N]``: a Gemm's ``transB`` weight is transposed at planning time). A MatMul of two
activations (attention's ``Q·K^T``) has no integer kernel.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.targets.integer import qdq
from edgec.targets.integer.arith import check_int32
from edgec.targets.integer.epilogue import emit_finish, finish
from edgec.targets.integer.qdq import Group, Refuse
from edgec.targets.integer.weighted import WeightedKind


def _two_activations(op: str) -> str:
    return f"{op} of two activations has no integer kernel (its second operand is not a constant weight)"


class IntegerMatMul(WeightedKind):
    """int8 ``x @ W`` with a per-column requantization and a fused clamp."""

    op_type: ClassVar[str] = "IntegerMatMul"
    float_ops: ClassVar[tuple[str, ...]] = ("Gemm", "MatMul")
    kernel: ClassVar[str] = "integer matmul"

    def refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(weight, gs.Constant):
            return _two_activations(node.op)
        if len(weight.shape) != 2:
            return f"its constant operand is {len(weight.shape)}-D; only 2-D weights have an integer kernel"
        if node.op == "Gemm" and node.attrs.get("transA", 0):
            return "Gemm with transA=1 has no integer kernel"
        return None

    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        node = group.node
        x = qdq.activation(node.inputs[0])
        weight = qdq.dequantize_of(node.inputs[1])
        if weight is not None and not isinstance(weight.inputs[0], gs.Constant):
            raise Refuse(_two_activations(node.op))
        w, sw, axis = qdq.weight(node.inputs[1])
        if node.op == "Gemm":
            attrs = node.attrs
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                raise Refuse(f"{qdq.label(node)} has alpha/beta != 1 or transA")
            if attrs.get("transB", 0):
                w = w.T
                axis = {0: 1, 1: 0}.get(axis, axis)
        if w.ndim != 2:
            raise Refuse(f"{qdq.label(node)} has a {w.ndim}-D constant operand; only 2-D weights are lowered")
        if axis not in (1, -1):
            raise Refuse(f"{qdq.label(node)} weights are quantized along axis {axis}, not the output column")
        return [self.weighted_node(graph, group, x, w, sw, w.astype(np.int64).sum(axis=0), {})]

    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        from tvm import relax

        x = bb.normalize(args[0])
        rank = len(x.ty.shape)
        sparse = self.sparse_weight(node)
        if sparse is not None:
            from edgec.targets.tvm.sparse_kernels import emit_sparse_matmul

            acc = emit_sparse_matmul(bb, x, sparse, "int32")
        else:
            acc = relax.op.matmul(x, relax.const(self.constant(node, "weight"), "int8"), out_dtype="int32")
        acc = relax.op.add(acc, relax.const(self.constant(node, "bias").astype(np.int32), "int32"))
        mult, shift = self.constant(node, "multiplier"), self.constant(node, "shift")
        return emit_finish(bb, acc, node, rank, rank - 1, mult, shift)

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        weight = self.weight(node).astype(np.float64)
        acc = np.rint(args[0].astype(np.float64) @ weight).astype(np.int64)
        acc = acc + self.constant(node, "bias").astype(np.int64)
        check_int32(acc, node.name)
        mult, shift = self.constant(node, "multiplier"), self.constant(node, "shift")
        return finish(acc, node, acc.ndim - 1, mult, shift)
