"""Canonical spellings of ops that ONNX can write several ways, so that quantization and the
targets' lowering handle one form: an n-ary ``Sum`` is a chain of ``Add``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.common import RewritePass
from edgec.pm import register
from edgec.rewrite import Match, Op, Rule, RuleSet, forward

__all__ = ["SplitSum", "sum_rules"]


def sum_rules() -> RuleSet:
    """``Sum(x0, ..., xn) = Add(...Add(Add(x0, x1), x2)..., xn)`` (``Sum(x0) = x0``)."""
    # The driver detaches a matched node before its replacement is built: the check keeps the
    # operands (a Sum has any number of them, so the pattern cannot bind them by name).
    operands: dict[int, list[gs.Tensor]] = {}

    def check(match: Match, graph: EdgeGraph) -> str | None:
        node = match["sum"]
        if node.domain not in (None, "", "ai.onnx"):
            return f"a Sum of domain '{node.domain}' is not ONNX's"
        if not node.inputs or any(not tensor.name for tensor in node.inputs):
            return "a Sum with a missing operand is not valid ONNX"
        operands[id(node)] = list(node.inputs)
        return None

    def split(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        node = match["sum"]
        inputs = operands.pop(id(node))
        output = match.outputs[0]
        if len(inputs) == 1:
            return forward(match, graph, output, inputs[0])
        adds = []
        total = inputs[0]
        for position, operand in enumerate(inputs[1:], start=1):
            last = position == len(inputs) - 1
            result = (
                output
                if last
                else gs.Variable(graph.fresh_name(f"{output.name}_partial"), dtype=output.dtype)
            )
            name = node.name if last else graph.fresh_name(f"{node.name}_partial")
            adds.append(gs.Node("Add", name=name, inputs=[total, operand], outputs=[result]))
            total = result
        return adds

    return RuleSet([Rule("sum", Op("Sum", any_inputs=True, name="sum"), split, check)])


@register
@dataclass(frozen=True)
class SplitSum(RewritePass):
    """Rewrites an n-ary Sum as a chain of Add (the relax frontend's Sum is a 5-D stack that breaks NHWC)."""

    name: ClassVar[str] = "split-sum"
    lossless: ClassVar[bool] = True
    counter: ClassVar[str] = "split"

    @property
    def rules(self) -> RuleSet:
        return sum_rules()
