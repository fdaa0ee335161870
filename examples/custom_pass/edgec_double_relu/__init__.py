"""An edgec pass written outside the edgec repository, found through the ``edgec.passes`` entry point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.rewrite import Match, Op, Rule, RuleSet, Var


def _single_relu(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """relu(relu(x)) = relu(x): keep the inner Relu, writing the outer one's output."""
    return [gs.Node("Relu", name=match["outer"].name, inputs=[match["x"]], outputs=match.outputs)]


DOUBLE_RELU = RuleSet(
    [Rule("relu-relu", Op("Relu", Op("Relu", Var("x"), name="inner"), name="outer"), _single_relu)]
)


@register
@dataclass(frozen=True)
class EliminateDoubleRelu(Pass):
    """Replaces Relu(Relu(x)) by Relu(x)."""

    name: ClassVar[str] = "eliminate-double-relu"
    lossless: ClassVar[bool] = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        report = DOUBLE_RELU.apply(graph)
        return PassResult(graph, changed=report.total > 0, stats={"removed": report.total})
