"""``pad-channels``: an integer convolution whose input channels the target's int8 micro-kernel
cannot take in whole steps gets zero weights for extra input channels, so the micro-kernel takes it.

A dot-product micro-kernel (:mod:`edgec.targets.tvm.int8_dot`) multiplies ``g`` consecutive input
channels per instruction (``sdot`` and ``vpdpbusd``: 4, ``sadalp`` and ``vpmaddwd``: 2). A
convolution on an RGB image (3 input channels) fits none of them and keeps the plain vectorised
loops: on cortex-a55 the int8 squeezenet's first convolution, 6% of its MACs, executed 22% of its
instructions. This pass pads the weight with ``g - C % g`` zero input channels and sets the
node's ``channel_pad``, with which ``IntegerConv`` pads its input by as many channels of the input
zero point. The extra products are all zero and the weight sums folded into the bias do not
change, so the sums are exactly the same. Only dense, ungrouped ``IntegerConv`` nodes; the targets
name it in their legalization only where a micro-kernel has such a step and RAM is not the budget
(the padded input costs ``(C + pad) / C`` of its bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.rewrite import Const, Match, Op, Rule, RuleSet, Var
from edgec.targets.integer.kind import DOMAIN

__all__ = ["PadChannels", "padding_rules"]


def padding_rules(multiple: int) -> RuleSet:
    """The one rule: ``IntegerConv`` with ``C % multiple != 0`` input channels, padded to a multiple."""

    def check(match: Match, graph: EdgeGraph) -> str | None:
        node, weight = match["conv"], match["w"]
        if node.domain != DOMAIN:
            return f"not edgec's IntegerConv (domain {node.domain!r})"
        if int(node.attrs.get("group", 1)) != 1:
            return "a grouped or depthwise convolution (its channels are not one reduction)"
        if int(node.attrs.get("channel_pad", 0)):
            return "its input channels are padded already"
        channels = int(weight.shape[1])
        if channels % multiple == 0:
            return f"its {channels} input channels are a multiple of {multiple}"
        if len(weight.outputs) != 1:
            return f"its weight '{weight.name}' is also read by other nodes"
        return None

    def pad(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        node, weight = match["conv"], match["w"]
        values = np.asarray(weight.values)
        extra = -values.shape[1] % multiple
        widths = [(0, 0), (0, extra)] + [(0, 0)] * (values.ndim - 2)
        padded = graph.add_constant(f"{weight.name}__padded", np.pad(values, widths))
        inputs = [match["x"], padded, match["b"], match["m"], match["s"]]  # (the match is detached)
        attrs = {**node.attrs, "channel_pad": extra}
        conv = gs.Node(node.op, name=node.name, domain=node.domain, attrs=attrs, inputs=inputs)
        conv.outputs = list(match.outputs)
        return [conv]

    pattern = Op("IntegerConv", Var("x"), Const("w"), Var("b"), Var("m"), Var("s"), name="conv")
    return RuleSet([Rule("pad-input-channels", pattern, pad, check)])


@register
@dataclass(frozen=True)
class PadChannels(Pass):
    """Pads integer convolutions' input channels with zero weights to the micro-kernel's reduction step."""

    name: ClassVar[str] = "pad-channels"
    # IntegerConv is edgec's own op (onnxruntime cannot run it); the padding is exact
    # (tests/targets/test_pad_channels.py runs the integer reference before and after).
    lossless: ClassVar[bool] = False
    multiple: int = 4

    def __post_init__(self) -> None:
        if self.multiple < 2:
            raise EdgecError(f"pad-channels multiple {self.multiple} must be at least 2")

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        report = padding_rules(self.multiple).apply(graph)
        return PassResult(graph, changed=report.total > 0, stats={"padded": report.total, **report.stats()})
