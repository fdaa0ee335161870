"""inline-constant-if and unroll-loops: structure, numerics against onnxruntime, refusals.

Numeric tolerance: fp32 lossless, ``atol=1e-5, rtol=1e-4`` (STYLE.md), plus the pass manager's
verification (every test runs with verification on).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.errors import UnsupportedNodeError
from edgec.ir import op_sequence
from tests.helpers import assert_same_outputs, covers, make_model, run_pipeline

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _value(name: str, dtype: int, shape: list[int] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def loop_model(trips: int | None = 4, cond: str = "identity", trip_input: bool = False) -> onnx.ModelProto:
    """``acc = x; for i < trips: acc = acc * w + i; scan[i] = tanh(acc)``.

    ``cond``: ``identity`` (body passes its condition through), ``constant`` (body outputs true),
    ``data`` (body computes it from the accumulator: an early exit).
    """
    body_nodes = [
        helper.make_node("Cast", ["i"], ["i_f"], to=F),
        helper.make_node("Mul", ["acc_in", "w"], ["scaled"]),
        helper.make_node("Add", ["scaled", "i_f"], ["acc_out"]),
        helper.make_node("Tanh", ["acc_out"], ["scan_out"]),
    ]
    if cond == "identity":
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    elif cond == "constant":
        body_nodes.append(
            helper.make_node("Constant", [], ["cond_out"], value=helper.make_tensor("t", BOOL, [], [True]))
        )
    else:
        body_nodes += [
            helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
            helper.make_node("Less", ["total", "limit"], ["cond_out"]),
        ]
    body = helper.make_graph(
        body_nodes,
        "body",
        [_value("i", I64, []), _value("cond_in", BOOL, []), _value("acc_in", F, [2, 3])],
        [_value("cond_out", BOOL, []), _value("acc_out", F, [2, 3]), _value("scan_out", F, [2, 3])],
    )
    initializers = {"w": np.full((2, 3), 0.5, np.float32), "limit": np.array(100.0, np.float32)}
    inputs = {"x": (F, [2, 3])}
    if trip_input:
        inputs["n"] = (I64, [])
        trip_name = "n"
    else:
        trip_name = "" if trips is None else "trips"
        if trips is not None:
            initializers["trips"] = np.array(trips, np.int64)
    nodes = [helper.make_node("Loop", [trip_name, "", "x"], ["acc", "scans"], name="loop0", body=body)]
    outputs = {"acc": (F, [2, 3]), "scans": (F, [trips or 1, 2, 3])}
    return make_model(nodes, inputs, outputs, initializers, opset=17)


@covers("unroll-loops", kind="structural")
@covers("unroll-loops", kind="numeric")
@pytest.mark.parametrize("cond", ["identity", "constant"])
def test_loop_with_constant_trip_count_is_unrolled(cond: str) -> None:
    model = loop_model(4, cond)
    graph, records = run_pipeline("unroll-loops", model)
    assert records[0].stats["unrolled"] == 1
    assert records[0].stats["loops"] == [{"node": "loop0", "trips": 4}]
    ops = op_sequence(graph)
    assert "Loop" not in ops
    assert ops.count("Tanh") == 4 and ops.count("Mul") == 4
    assert_same_outputs(model, graph.to_onnx())


def test_nested_loops_are_unrolled() -> None:
    inner = loop_model(3).graph.node[0]
    body = helper.make_graph(
        [
            helper.make_node(
                "Loop",
                ["trips", "", "acc_in"],
                ["acc_out", "inner_scan"],
                name="inner",
                body=inner.attribute[0].g,
            ),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "outer_body",
        [_value("j", I64, []), _value("cond_in", BOOL, []), _value("acc_in", F, [2, 3])],
        [_value("cond_out", BOOL, []), _value("acc_out", F, [2, 3]), _value("inner_scan", F, [3, 2, 3])],
    )
    model = make_model(
        [helper.make_node("Loop", ["two", "", "x"], ["acc", "scans"], name="outer", body=body)],
        {"x": (F, [2, 3])},
        {"acc": (F, [2, 3]), "scans": (F, [2, 3, 2, 3])},
        {"w": np.full((2, 3), 0.5, np.float32), "trips": np.array(3, np.int64), "two": np.array(2, np.int64)},
    )
    graph, records = run_pipeline("unroll-loops", model)
    assert records[0].stats["unrolled"] == 3  # the outer loop and its two inner copies
    assert "Loop" not in op_sequence(graph)
    assert_same_outputs(model, graph.to_onnx())


@covers("unroll-loops", kind="negative")
@pytest.mark.parametrize(
    ("model", "message"),
    [
        (loop_model(100), "trip count 100 exceeds the unroll limit max_trips=64"),
        (loop_model(trip_input=True), "trip count 'n' is data-dependent"),
        (loop_model(4, cond="data"), "computes the continue condition from data"),
        (loop_model(None), "no trip count"),
    ],
)
def test_loop_refusals_name_the_node(model: onnx.ModelProto, message: str) -> None:
    with pytest.raises(UnsupportedNodeError) as info:
        run_pipeline("unroll-loops", model, verify=False)
    assert info.value.node_name == "loop0"
    assert str(info.value).startswith("Loop 'loop0': ")
    assert message in str(info.value)


def test_max_trips_option_raises_the_limit() -> None:
    model = loop_model(100)
    graph, records = run_pipeline("unroll-loops{max_trips=100}", model)
    assert records[0].stats["unrolled"] == 1
    assert_same_outputs(model, graph.to_onnx())


def _branch(name: str, op: str, source: str, out: str) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, [source], [out])], name, [], [_value(out, F, [2, 3])])


def nested_constant_if(condition: bool = True) -> onnx.ModelProto:
    """If(constant) whose then-branch holds another If(constant); outputs go through Identity."""
    inner = helper.make_node(
        "If",
        ["c_inner"],
        ["inner_out"],
        name="inner_if",
        then_branch=_branch("inner_then", "Relu", "x", "it"),
        else_branch=_branch("inner_else", "Neg", "x", "ie"),
    )
    outer_then = helper.make_graph(
        [inner, helper.make_node("Mul", ["inner_out", "k"], ["ot"])],
        "outer_then",
        [],
        [_value("ot", F, [2, 3])],
    )
    nodes = [
        helper.make_node(
            "If",
            ["c_outer"],
            ["y0"],
            name="outer_if",
            then_branch=outer_then,
            else_branch=_branch("outer_else", "Identity", "x", "oe"),
        ),
        helper.make_node("Add", ["y0", "x"], ["y"]),
    ]
    return make_model(
        nodes,
        {"x": (F, [2, 3])},
        {"y": (F, [2, 3])},
        {
            "c_outer": np.array(condition),
            "c_inner": np.array(False),
            "k": np.array(2.0, np.float32),
        },
    )


@covers("inline-constant-if", kind="structural")
@covers("inline-constant-if", kind="numeric")
@pytest.mark.parametrize("condition", [True, False])
def test_nested_constant_if_is_inlined(condition: bool) -> None:
    model = nested_constant_if(condition)
    graph, records = run_pipeline("inline-constant-if", model)
    assert "If" not in op_sequence(graph)
    assert records[0].stats["inlined"] == (2 if condition else 1)
    expected = ["Neg", "Mul", "Add"] if condition else ["Identity", "Add"]
    assert op_sequence(graph) == expected
    assert_same_outputs(model, graph.to_onnx())


@covers("inline-constant-if", kind="negative")
def test_if_on_a_live_input_is_left_alone() -> None:
    model = make_model(
        [
            helper.make_node(
                "If",
                ["c"],
                ["y"],
                name="live_if",
                then_branch=_branch("then", "Relu", "x", "t"),
                else_branch=_branch("else", "Neg", "x", "e"),
            )
        ],
        {"x": (F, [2, 3]), "c": (BOOL, [])},
        {"y": (F, [2, 3])},
    )
    graph, records = run_pipeline("inline-constant-if", model)
    assert not records[0].changed
    assert op_sequence(graph) == ["If"]
