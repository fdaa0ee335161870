"""Pass manager v2: the in-place/functional contract, cached analyses and their invalidation,
instruments around passes, nested pass runs, and the fixed-point note."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph, op_sequence
from edgec.pm import (
    FixedPoint,
    Pass,
    PassContext,
    PassContractError,
    PassInstrument,
    PassManager,
    PassResult,
    default_instruments,
    get_pass,
)
from tests.helpers import make_model

F = TensorProto.FLOAT


def _graph() -> EdgeGraph:
    model = make_model(
        [
            helper.make_node("Identity", ["x"], ["i"], name="identity"),
            helper.make_node("Relu", ["i"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w"], ["y"], name="conv"),
        ],
        {"x": (F, [1, 2, 5, 5])},
        {"y": (F, [1, 3, 3, 3])},
        {"w": np.ones((3, 2, 3, 3), np.float32)},
    )
    return EdgeGraph.from_onnx(model)


@dataclass(frozen=True)
class RenameRelu(Pass):
    """Test pass: renames the Relu node in place (an attribute-level change)."""

    name: ClassVar[str] = "test-rename-relu"

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        graph.node("relu").name = "relu_renamed"
        return PassResult(graph, changed=True)


@dataclass(frozen=True)
class CopyAndDropIdentity(Pass):
    """Test pass: returns a copy without the Identity (a functional pass done right)."""

    name: ClassVar[str] = "test-copy-drop-identity"
    in_place: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        copy = graph.copy()
        return ctx.run_pass(get_pass("eliminate-identity")(), copy)


@dataclass(frozen=True)
class DeclaresInPlaceButCopies(Pass):
    """Test pass: breaks the in-place contract by returning a new graph."""

    name: ClassVar[str] = "test-bad-in-place"

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        return PassResult(graph.copy(), changed=True)


@dataclass(frozen=True)
class DeclaresFunctionalButMutates(Pass):
    """Test pass: breaks the functional contract by changing its input."""

    name: ClassVar[str] = "test-bad-functional"
    in_place: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        copy = graph.copy()
        graph.node("relu").op = "Sigmoid"
        return PassResult(copy, changed=True)


@dataclass(frozen=True)
class Flip(Pass):
    """Test pass: toggles Relu and Sigmoid forever (a pipeline that never reaches a fixed point)."""

    name: ClassVar[str] = "test-flip"
    lossless: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        node = next(n for n in graph.nodes if n.op in ("Relu", "Sigmoid"))
        node.op = "Sigmoid" if node.op == "Relu" else "Relu"
        return PassResult(graph, changed=True)


def test_functional_pass_returns_a_new_graph_and_its_nested_pass_is_recorded() -> None:
    graph = _graph()
    before = graph.text()
    run = PassManager([CopyAndDropIdentity()], PassContext(verify=True)).run(graph)
    assert graph.text() == before  # the input is untouched
    assert op_sequence(run.graph) == ["Relu", "Conv"]
    # Completion order: the nested pass first, attributed to the pass that ran it, then verified.
    assert [(r.name, r.parent) for r in run.records] == [
        ("eliminate-identity", "test-copy-drop-identity"),
        ("test-copy-drop-identity", None),
    ]
    assert run.records[0].max_abs_error == 0.0


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        (DeclaresInPlaceButCopies(), "declared in place but returned a new graph"),
        (DeclaresFunctionalButMutates(), r"declared functional \(in_place = False\) but changed the graph"),
    ],
)
def test_contract_violations_are_errors(instance: Pass, message: str) -> None:
    with pytest.raises(PassContractError, match=message):
        PassManager([instance]).run(_graph())


def test_analyses_are_cached_and_invalidated_by_a_change() -> None:
    graph = _graph()
    ctx = PassContext()
    cost = ctx.analyses.get("cost", graph)
    assert cost.macs == 3 * 3 * 3 * 2 * 3 * 3
    assert ctx.analyses.get("cost", graph) is cost and ctx.analyses.computed == {"shapes": 1, "cost": 1}
    # A pass that changes the graph without preserving anything drops both analyses ...
    PassManager([RenameRelu()], ctx, instruments=[]).run(graph)
    assert not ctx.analyses.cached("cost", graph) and not ctx.analyses.cached("shapes", graph)
    # ... and a rewiring drops them even when no pass manager saw it.
    ctx.analyses.get("cost", graph)
    conv = graph.node("conv")
    conv.inputs[0] = graph.node("identity").outputs[0]
    assert not ctx.analyses.cached("cost", graph)


def test_preserved_analyses_survive_the_pass() -> None:
    @dataclass(frozen=True)
    class RenamePreservingShapes(RenameRelu):
        preserves: ClassVar[frozenset[str]] = frozenset({"shapes"})

    graph = _graph()
    ctx = PassContext()
    ctx.analyses.get("cost", graph)
    PassManager([RenamePreservingShapes()], ctx, instruments=[]).run(graph)
    assert ctx.analyses.cached("shapes", graph) and not ctx.analyses.cached("cost", graph)


def test_instruments_wrap_every_pass_and_record_cost_deltas() -> None:
    seen: list[tuple[str, str]] = []

    class Trace(PassInstrument):
        def before(self, instance, graph, ctx):
            seen.append(("before", instance.name))
            return instance.name

        def after(self, instance, state, result, record, ctx):
            seen.append(("after", state))

    run = PassManager(
        "eliminate-identity,fold-constants", PassContext(), instruments=[Trace(), *default_instruments()]
    ).run(_graph())
    assert seen == [
        ("before", "eliminate-identity"),
        ("after", "eliminate-identity"),
        ("before", "fold-constants"),
        ("after", "fold-constants"),
    ]
    identity, folding = run.records
    assert identity.seconds > 0 and identity.changed and not folding.changed
    # Removing an Identity changes no MACs, parameters or bytes: no delta is recorded.
    assert identity.cost is None


def test_cost_delta_is_recorded_when_a_pass_changes_costs() -> None:
    graph = _graph()
    # A second Conv whose output nobody reads: dead code with 3*2*3*3 weights and 162 MACs.
    dead = gs.Variable("dead_out")
    weights = gs.Constant("w_dead", np.ones((3, 2, 3, 3), np.float32))
    graph.gs.nodes.append(
        gs.Node("Conv", "dead", inputs=[graph.node("relu").outputs[0], weights], outputs=[dead])
    )
    run = PassManager("eliminate-dead-code", PassContext()).run(graph)
    assert run.records[0].cost == {
        "macs": [2 * 486, 486],
        "params": [2 * 54, 54],
        "weight_bytes": [2 * 216, 216],
    }


def test_a_pipeline_that_never_settles_warns_and_says_so() -> None:
    warnings: list[str] = []
    step = FixedPoint("flipper", (Flip(),), limit=3)
    run = PassManager([step], PassContext(warn=warnings.append)).run(_graph())
    assert len(run.records) == 3
    assert run.notes == warnings and len(warnings) == 1
    assert "did not reach its fixed point within 3 rounds" in warnings[0]
