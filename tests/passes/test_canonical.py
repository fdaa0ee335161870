"""split-sum (passes/canonical.py): an n-ary Sum becomes a chain of Add."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph, op_sequence
from tests.helpers import assert_same_outputs, covers, make_model, run_pipeline

F = TensorProto.FLOAT


def _sum_model(count: int, domain: str = "") -> onnx.ModelProto:
    """``Relu(Sum(x0, ..., x{count-1}, b))`` with ``b`` broadcast (Sum is multidirectional too)."""
    inputs = {f"x{i}": (F, [1, 4, 3]) for i in range(count)} | {"b": (F, [3])}
    nodes = [
        helper.make_node("Sum", list(inputs), ["s"], name="total", domain=domain),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    if not domain:
        return make_model(nodes, inputs, {"y": (F, [1, 4, 3])})
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info("y", F, [1, 4, 3])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, opset_imports=opsets)


@covers("split-sum", kind="structural")
def test_split_sum_writes_an_add_chain_named_after_the_sum():
    graph, (record,) = run_pipeline("split-sum", _sum_model(3))
    assert op_sequence(graph) == ["Add", "Add", "Add", "Relu"]
    assert record.stats["split"] == 1
    last = graph.node("total")  # the last Add keeps the Sum's name and output
    assert last.op == "Add" and last.outputs[0].name == "s"
    assert [n.name.startswith("total_partial") for n in graph.nodes[:2]] == [True, True]


@covers("split-sum", kind="numeric")
def test_split_sum_computes_the_same_values():
    model = _sum_model(4)
    graph, _ = run_pipeline("split-sum", model)  # verified (lossless) by the pass manager too
    assert_same_outputs(model, graph.to_onnx())


def test_a_one_input_sum_is_its_input():
    model = make_model(
        [
            helper.make_node("Neg", ["x"], ["n"], name="neg"),
            helper.make_node("Sum", ["n"], ["s"], name="alone"),
            helper.make_node("Relu", ["s"], ["y"], name="relu"),
        ],
        {"x": (F, [2, 3])},
        {"y": (F, [2, 3])},
    )
    graph, _ = run_pipeline("split-sum", model)
    assert op_sequence(graph) == ["Neg", "Relu"]
    assert_same_outputs(model, graph.to_onnx())


@covers("split-sum", kind="negative")
def test_a_sum_of_another_domain_is_refused_with_the_reason():
    model = _sum_model(2, domain="com.example")
    before = EdgeGraph.from_onnx(model).text()
    graph, (record,) = run_pipeline("split-sum", model, verify=False)
    assert graph.text() == before and not record.changed
    assert record.stats["refused"] == [
        {"rule": "sum", "node": "total", "reason": "a Sum of domain 'com.example' is not ONNX's"}
    ]
    assert op_sequence(graph) == ["Sum", "Relu"]
