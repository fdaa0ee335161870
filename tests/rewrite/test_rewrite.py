"""The rewrite DSL: what patterns bind, when they refuse to match, and how the driver reports."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph, op_sequence
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var, forward, match_pattern
from tests.helpers import assert_same_outputs, make_model

F = TensorProto.FLOAT


def _graph(nodes, inputs=None, outputs=None, initializers=None) -> EdgeGraph:
    model = make_model(
        nodes,
        inputs or {"x": (F, [1, 4])},
        outputs or {"y": (F, [1, 4])},
        initializers,
    )
    return EdgeGraph.from_onnx(model)


def _root(graph: EdgeGraph, op: str) -> gs.Node:
    return next(node for node in graph.nodes if node.op == op)


def _outputs(graph: EdgeGraph) -> set[int]:
    return {id(t) for t in graph.outputs}


def _add_relu(extra_nodes=(), extra_outputs=None) -> EdgeGraph:
    nodes = [
        helper.make_node("Add", ["x", "c"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
        *extra_nodes,
    ]
    outputs = {"y": (F, [1, 4]), **(extra_outputs or {})}
    return _graph(nodes, outputs=outputs, initializers={"c": np.arange(4, dtype=np.float32)})


def test_pattern_binds_nodes_tensors_and_constants():
    graph = _add_relu()
    pattern = Op("Relu", Op("Add", Var("x"), Const("c"), name="add"), name="relu")
    match = match_pattern(pattern, _root(graph, "Relu"), _outputs(graph))
    assert match is not None
    assert match["add"].name == "add" and match["relu"].name == "relu"
    assert match["x"].name == "x" and match["c"].name == "c"
    np.testing.assert_array_equal(match.const("c"), np.arange(4, dtype=np.float32))
    assert [node.name for node in match.matched] == ["relu", "add"]
    assert [t.name for t in match.outputs] == ["y"]


def test_const_does_not_bind_an_activation():
    graph = _add_relu()
    pattern = Op("Relu", Op("Add", Const("a"), Const("c")))
    assert match_pattern(pattern, _root(graph, "Relu"), _outputs(graph)) is None


def test_same_variable_name_must_bind_the_same_tensor():
    square = _graph([helper.make_node("Mul", ["x", "x"], ["y"])])
    product = _graph(
        [helper.make_node("Mul", ["x", "z"], ["y"])], inputs={"x": (F, [1, 4]), "z": (F, [1, 4])}
    )
    pattern = Op("Mul", Var("a"), Var("a"))
    assert match_pattern(pattern, _root(square, "Mul"), _outputs(square)) is not None
    assert match_pattern(pattern, _root(product, "Mul"), _outputs(product)) is None


def test_optional_binds_none_when_absent():
    weights = {"w": np.ones((2, 1, 1, 1), np.float32), "b": np.zeros(2, np.float32)}
    pattern = Op("Conv", Var("x"), Const("w"), Optional(Const("b")))
    for inputs, expected in ((["x", "w"], None), (["x", "w", "b"], "b")):
        graph = EdgeGraph.from_onnx(
            make_model(
                [helper.make_node("Conv", inputs, ["y"])],
                {"x": (F, [1, 1, 2, 2])},
                {"y": (F, [1, 2, 2, 2])},
                weights if expected else {"w": weights["w"]},
            )
        )
        match = match_pattern(pattern, _root(graph, "Conv"), _outputs(graph))
        assert match is not None
        assert (match["b"].name if match["b"] is not None else None) == expected
        assert (match.const("b") is None) == (expected is None)


def test_commutative_tries_both_operand_orders():
    graph = _graph([helper.make_node("Add", ["c", "x"], ["y"])], initializers={"c": np.ones(4, np.float32)})
    root = _root(graph, "Add")
    assert match_pattern(Op("Add", Var("x"), Const("c")), root, _outputs(graph)) is None
    match = match_pattern(Op("Add", Var("x"), Const("c"), commutative=True), root, _outputs(graph))
    assert match is not None and match["c"].name == "c" and match["x"].name == "x"


def test_intermediate_with_two_consumers_is_not_matched():
    graph = _add_relu(
        extra_nodes=[helper.make_node("Neg", ["s"], ["z"], name="neg")], extra_outputs={"z": (F, [1, 4])}
    )
    pattern = Op("Relu", Op("Add", Var("x"), Const("c")))
    assert match_pattern(pattern, _root(graph, "Relu"), _outputs(graph)) is None


def test_any_inputs_matches_a_node_whatever_its_inputs_and_binds_none():
    graph = _add_relu()
    pattern = Op("Relu", Op("Add", any_inputs=True, name="add"), name="relu")
    match = match_pattern(pattern, _root(graph, "Relu"), _outputs(graph))
    assert match is not None and match["add"].op == "Add" and set(match.tensors) == set()
    assert (
        match_pattern(Op("Relu", Op("Sub", any_inputs=True)), _root(graph, "Relu"), _outputs(graph)) is None
    )


def test_intermediate_that_is_a_graph_output_is_not_matched():
    graph = _add_relu(extra_outputs={"s": (F, [1, 4])})
    pattern = Op("Relu", Op("Add", Var("x"), Const("c")))
    assert match_pattern(pattern, _root(graph, "Relu"), _outputs(graph)) is None


def _drop_relu(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    return forward(match, graph, match.outputs[0], match["x"])


def test_refusal_reason_is_collected_and_graph_left_alone():
    graph = _add_relu()
    before = graph.text()
    rules = RuleSet([Rule("no-relu", Op("Relu", Var("x")), _drop_relu, lambda m, g: "needed here")])
    report = rules.apply(graph)
    assert report.total == 0
    assert report.refused == [("no-relu", "relu", "needed here")]
    assert report.stats()["refused"] == [{"rule": "no-relu", "node": "relu", "reason": "needed here"}]
    assert graph.text() == before


def test_rules_apply_to_a_fixed_point_and_count():
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in (("x", "r1"), ("r1", "r2"), ("r2", "y"))]
    model = make_model(
        [helper.make_node("Neg", ["x0"], ["x"]), *nodes], {"x0": (F, [1, 4])}, {"y": (F, [1, 4])}
    )
    graph = EdgeGraph.from_onnx(model)
    report = RuleSet([Rule("no-relu", Op("Relu", Var("x")), _drop_relu)]).apply(graph)
    assert report.total == 3 and report.stats()["applied"] == {"no-relu": 3}
    assert op_sequence(graph) == ["Neg"]


def test_forward_keeps_the_graph_output_name():
    graph = _add_relu()
    RuleSet([Rule("no-relu", Op("Relu", Var("x")), _drop_relu)]).apply(graph)
    assert op_sequence(graph) == ["Add"]
    assert [t.name for t in graph.outputs] == ["y"]
    assert graph.nodes[0].outputs[0].name == "y"


def test_forward_writes_an_identity_when_the_output_comes_from_a_graph_input():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, [1, 4])}, {"y": (F, [1, 4])})
    graph = EdgeGraph.from_onnx(model)
    RuleSet([Rule("no-relu", Op("Relu", Var("x")), _drop_relu)]).apply(graph)
    assert op_sequence(graph) == ["Identity"]
    assert [t.name for t in graph.inputs] == ["x"] and [t.name for t in graph.outputs] == ["y"]


def test_replacement_computes_the_same_values():
    """A rewrite with real arithmetic: relu(x + c) with c >= 0 stays relu(x + c) for ORT."""
    graph = _add_relu()
    before = graph.to_onnx()

    def fold(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        """relu(x + c) = max(x + c, 0), written as Add then Max with a zero constant."""
        zero = graph.add_constant("zero", np.zeros(1, np.float32))
        total = gs.Variable(graph.fresh_name("sum"), dtype=np.float32)
        return [
            gs.Node("Add", inputs=[match["x"], match["c"]], outputs=[total]),
            gs.Node("Max", inputs=[total, zero], outputs=match.outputs),
        ]

    RuleSet([Rule("relu-as-max", Op("Relu", Op("Add", Var("x"), Const("c"))), fold)]).apply(graph)
    assert op_sequence(graph) == ["Add", "Max"]
    assert_same_outputs(before, graph.to_onnx())
