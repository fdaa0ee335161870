"""Fuse a MatMul and the bias Add after it into one Gemm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.common import RewritePass
from edgec.passes.fusion.common import is_float, rank
from edgec.pm import register
from edgec.rewrite import Const, Match, Op, Rule, RuleSet, Var


def _matmul_add_check(match: Match, graph: EdgeGraph) -> str | None:
    weights, bias = match.const("w"), match.const("bias")
    if weights.ndim != 2 or not is_float(weights):
        return "the weight is not a 2-D floating-point matrix"
    if rank(match["x"]) != 2:
        return f"MatMul input has rank {rank(match['x'])}, Gemm needs rank 2"
    if bias.dtype != weights.dtype:
        return f"bias dtype {bias.dtype} differs from weight dtype {weights.dtype}"
    if bias.shape not in ((), (1,), (weights.shape[1],), (1, 1), (1, weights.shape[1])):
        return f"bias shape {list(bias.shape)} does not broadcast over the last dimension only"
    return None


def _fuse_matmul_add(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """MatMul(x, W) + c = Gemm(x, W, c) with alpha = beta = 1 (c broadcast over the rows)."""
    return [
        gs.Node(
            "Gemm",
            name=match["matmul"].name,
            inputs=[match["x"], match["w"], match["bias"]],
            outputs=match.outputs,
        )
    ]


MATMUL_ADD_RULES = RuleSet(
    [
        Rule(
            "matmul-add",
            Op("Add", Op("MatMul", Var("x"), Const("w"), name="matmul"), Const("bias"), commutative=True),
            _fuse_matmul_add,
            _matmul_add_check,
        )
    ]
)


@register
@dataclass(frozen=True)
class FuseMatMulAdd(RewritePass):
    """Fuses a 2-D MatMul by constant weights and an Add of a constant bias into one Gemm."""

    name: ClassVar[str] = "fuse-matmul-add"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = MATMUL_ADD_RULES
    counter: ClassVar[str] = "fused"
    needs_shapes: ClassVar[frozenset[str]] = frozenset({"MatMul"})


# ----- fuse-pad-conv ---------------------------------------------------------------------------
