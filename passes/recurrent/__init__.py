"""Recurrent layers decomposed: ONNX ``LSTM``, ``GRU`` and ``RNN`` unrolled over a static sequence.

TVM's relax ONNX frontend implements none of the three. For a static sequence length each is a
fixed chain of per-step matrix products and pointwise gates, which every target lowers:

* the input projection of all steps at once, ``XW = X · Wᵀ + b`` (``[seq, batch, gates·H]``);
* per step ``t`` (in reverse for the backward direction): ``Gather(XW, t)`` plus ``H_{t-1} · Rᵀ``,
  the gate activations, the state update;
* ``Y`` stacked from the per-step ``H_t``; ``Y_h``/``Y_c`` the last states.

A missing initial state is zero, so the first step skips its recurrent product (exactly, as
``0 · R = 0``). Streaming models keep their state as explicit graph inputs and outputs
(``initial_h`` in, ``Y_h`` out), which stays so: the firmware loop feeds ``Y_h`` back.

Refused, naming the node: ``sequence_lens`` other than the full length everywhere, non-zero
peepholes, non-default activations, ``clip``, ``input_forget``, non-constant weights, a symbolic
sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgec.errors import UnsupportedNodeError
from edgec.ir import EdgeGraph, static_shape
from edgec.passes.recurrent.cells import decompose
from edgec.passes.recurrent.layer import validate
from edgec.pm import Pass, PassContext, PassResult, register


def _decompose_all(graph: EdgeGraph, ctx: PassContext, op: str) -> PassResult:
    targets = [node for node in graph.nodes if node.op == op and node.domain in (None, "", "ai.onnx")]
    if not targets:
        return PassResult(graph, changed=False, stats={"decomposed": 0})
    if any(static_shape(node.inputs[0]) is None for node in targets):
        # Nodes whose input shape stays unknown are refused below, by name.
        ctx.analyses.get("shapes", graph)
    decomposed = []
    for node in targets:
        try:
            layer = validate(node)
        except UnsupportedNodeError as error:
            ctx.refuse(error)
            continue
        decompose(graph, layer)
        decomposed.append({"node": node.name, "steps": layer.seq, "directions": len(layer.directions)})
    if decomposed:
        graph.cleanup()
    return PassResult(
        graph, changed=bool(decomposed), stats={"decomposed": len(decomposed), "nodes": decomposed}
    )


@register
@dataclass(frozen=True)
class DecomposeLSTM(Pass):
    """Unrolls every LSTM with a static sequence length into MatMul, Add, Sigmoid, Tanh and Mul."""

    name: ClassVar[str] = "decompose-lstm"
    lossless: ClassVar[bool] = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        return _decompose_all(graph, ctx, "LSTM")


@register
@dataclass(frozen=True)
class DecomposeGRU(Pass):
    """Unrolls every GRU with a static sequence length into MatMul, Add, Sigmoid, Tanh and Mul."""

    name: ClassVar[str] = "decompose-gru"
    lossless: ClassVar[bool] = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        return _decompose_all(graph, ctx, "GRU")


@register
@dataclass(frozen=True)
class DecomposeRNN(Pass):
    """Unrolls every simple RNN with a static sequence length into MatMul, Add and Tanh."""

    name: ClassVar[str] = "decompose-rnn"
    lossless: ClassVar[bool] = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        return _decompose_all(graph, ctx, "RNN")
