"""Cleanup passes: structural (printed ops), numeric (onnxruntime) and negative tests for each."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph, op_sequence
from tests.helpers import assert_same_outputs, covers, make_model, pass_stats, refusal_reasons, run_pipeline

F = TensorProto.FLOAT
I64 = TensorProto.INT64


# ----- eliminate-dead-code ---------------------------------------------------------------------


def _dead_code_model() -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("Relu", ["x"], ["y"], name="live"),
            helper.make_node("Mul", ["x", "w"], ["dead1"], name="dead_mul"),
            helper.make_node("Neg", ["dead1"], ["dead2"], name="dead_neg"),
        ],
        {"x": (F, [2, 3])},
        {"y": (F, [2, 3])},
        {"w": np.ones((2, 3), np.float32), "unused": np.zeros(5, np.float32)},
    )


@covers("eliminate-dead-code", kind="structural")
def test_dead_code_structure():
    graph, records = run_pipeline("eliminate-dead-code", _dead_code_model())
    assert op_sequence(graph) == ["Relu"]
    assert "@w" not in graph.text()
    assert not graph.to_onnx().graph.initializer
    assert pass_stats(records, "eliminate-dead-code")["removed_nodes"] == 2


@covers("eliminate-dead-code", kind="numeric")
def test_dead_code_numeric():
    model = _dead_code_model()
    graph, _ = run_pipeline("eliminate-dead-code", model)
    assert_same_outputs(model, graph.to_onnx())


@covers("eliminate-dead-code", kind="negative")
def test_dead_code_keeps_live_nodes_and_graph_inputs():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": (F, [2]), "unused_input": (F, [2])},
        {"y": (F, [2])},
    )
    graph, records = run_pipeline("eliminate-dead-code", model)
    assert not records[0].changed
    # Graph inputs are the model's interface: callers still feed them.
    assert [t.name for t in graph.inputs] == ["x", "unused_input"]


# ----- eliminate-identity ----------------------------------------------------------------------


def _no_op_model(dropout_mask_used: bool = False) -> onnx.ModelProto:
    dropout_outputs = ["d", "mask"] if dropout_mask_used else ["d"]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["i"], name="identity"),
        helper.make_node("Dropout", ["i"], dropout_outputs, name="dropout"),
        helper.make_node("Reshape", ["d", "same_shape"], ["rs"], name="reshape"),
        helper.make_node("Transpose", ["rs"], ["t"], perm=[0, 1, 2], name="transpose"),
        helper.make_node("Cast", ["t"], ["c"], to=F, name="cast"),
        helper.make_node("Identity", ["c"], ["y"], name="last_identity"),
    ]
    outputs = {"y": (F, [2, 3, 4])}
    if dropout_mask_used:
        outputs["mask"] = (TensorProto.BOOL, [2, 3, 4])
    return make_model(nodes, {"x": (F, [2, 3, 4])}, outputs, {"same_shape": np.array([2, 0, -1], np.int64)})


@covers("eliminate-identity", kind="structural")
def test_eliminate_identity_structure():
    graph, records = run_pipeline("eliminate-identity", _no_op_model())
    assert op_sequence(graph) == ["Relu"]
    assert graph.text().splitlines()[2].startswith("  %y = Relu(%x)")
    assert [t.name for t in graph.outputs] == ["y"]
    assert pass_stats(records, "eliminate-identity")["applied"] == {
        "cast": 1,
        "dropout": 1,
        "identity": 2,
        "reshape": 1,
        "transpose": 1,
    }


@covers("eliminate-identity", kind="numeric")
def test_eliminate_identity_numeric():
    model = _no_op_model()
    graph, _ = run_pipeline("eliminate-identity", model)
    assert_same_outputs(model, graph.to_onnx())


@covers("eliminate-identity", kind="negative")
def test_eliminate_identity_refuses_used_dropout_mask_and_real_ops():
    model = make_model(
        [
            helper.make_node("Dropout", ["x"], ["d", "mask"], name="dropout"),
            helper.make_node("Reshape", ["d", "other_shape"], ["rs"], name="reshape"),
            helper.make_node("Transpose", ["rs"], ["t"], perm=[1, 0], name="transpose"),
            helper.make_node("Cast", ["t"], ["y"], to=TensorProto.DOUBLE, name="cast"),
        ],
        {"x": (F, [2, 3])},
        {"y": (TensorProto.DOUBLE, [2, 3]), "mask": (TensorProto.BOOL, [2, 3])},
        {"other_shape": np.array([3, 2], np.int64)},
    )
    graph, records = run_pipeline("eliminate-identity", model)
    assert op_sequence(graph) == ["Dropout", "Reshape", "Transpose", "Cast"]
    assert sorted(refusal_reasons(records, "eliminate-identity")) == [
        "Dropout's mask output is used",
        "it casts float32 to float64",
        "it reshapes [2, 3] to [3, 2]",
        "perm [1, 0] is not the identity",
    ]


def test_eliminate_identity_refuses_training_dropout_and_input_to_output_identity():
    model = make_model(
        [
            helper.make_node("Dropout", ["x", "ratio", "training"], ["d"], name="dropout"),
            helper.make_node("Identity", ["x"], ["copy"], name="identity"),
        ],
        {"x": (F, [2, 3])},
        {"d": (F, [2, 3]), "copy": (F, [2, 3])},
        {"ratio": np.array(0.5, np.float32), "training": np.array(True)},
    )
    graph, records = run_pipeline("eliminate-identity", model, verify=False)
    assert sorted(op_sequence(graph)) == ["Dropout", "Identity"]
    reasons = refusal_reasons(records, "eliminate-identity")
    assert "Dropout's training_mode is not a constant false" in reasons
    assert any("graph output" in reason for reason in reasons)


# ----- merge-transposes ------------------------------------------------------------------------


def _transposes_model(second_perm: list[int]) -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1], name="to_nhwc"),
            helper.make_node("Transpose", ["t1"], ["t2"], perm=second_perm, name="second"),
            helper.make_node("Relu", ["t2"], ["y"], name="relu"),
        ],
        {"x": (F, [1, 2, 3, 4])},
        {"y": (F, [[1, 3, 4, 2][axis] for axis in second_perm])},
    )


@covers("merge-transposes", kind="structural")
def test_merge_transposes_structure():
    graph, _ = run_pipeline("merge-transposes", _transposes_model([0, 2, 1, 3]))
    assert op_sequence(graph) == ["Transpose", "Relu"]
    assert "perm=[0,3,2,1]" in graph.text()
    cancelled, _ = run_pipeline("merge-transposes", _transposes_model([0, 3, 1, 2]))
    assert op_sequence(cancelled) == ["Relu"]


@covers("merge-transposes", kind="numeric")
def test_merge_transposes_numeric():
    for perm in ([0, 2, 1, 3], [0, 3, 1, 2], [3, 2, 1, 0]):
        model = _transposes_model(perm)
        graph, _ = run_pipeline("merge-transposes", model)
        assert_same_outputs(model, graph.to_onnx())


@covers("merge-transposes", kind="negative")
def test_merge_transposes_leaves_a_shared_intermediate():
    model = make_model(
        [
            helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 0], name="first"),
            helper.make_node("Transpose", ["t1"], ["y"], perm=[1, 0], name="second"),
            helper.make_node("Relu", ["t1"], ["z"], name="other_reader"),
        ],
        {"x": (F, [2, 3])},
        {"y": (F, [2, 3]), "z": (F, [3, 2])},
    )
    graph, records = run_pipeline("merge-transposes", model)
    assert op_sequence(graph).count("Transpose") == 2
    assert not records[0].changed


# ----- merge-reshapes --------------------------------------------------------------------------


def _reshapes_model() -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("Reshape", ["x", "s1"], ["r1"], name="r1"),
            helper.make_node("Unsqueeze", ["r1", "axes"], ["u"], name="unsqueeze"),
            helper.make_node("Flatten", ["u"], ["f"], axis=2, name="flatten"),
            helper.make_node("Reshape", ["f", "s2"], ["r2"], name="r2"),
            helper.make_node("Relu", ["r2"], ["y"], name="relu"),
        ],
        {"x": (F, [2, 3, 4])},
        {"y": (F, [6, 4])},
        {
            "s1": np.array([6, 4], np.int64),
            "axes": np.array([0], np.int64),
            "s2": np.array([0, -1], np.int64),
        },
    )


@covers("merge-reshapes", kind="structural")
def test_merge_reshapes_structure():
    graph, records = run_pipeline("merge-reshapes", _reshapes_model())
    assert op_sequence(graph) == ["Reshape", "Relu"]
    reshape = graph.nodes[0]
    np.testing.assert_array_equal(reshape.inputs[1].values, [6, 4])
    assert pass_stats(records, "merge-reshapes")["merged"] == 3


@covers("merge-reshapes", kind="numeric")
def test_merge_reshapes_numeric():
    model = _reshapes_model()
    graph, _ = run_pipeline("merge-reshapes", model)
    assert_same_outputs(model, graph.to_onnx())


@covers("merge-reshapes", kind="negative")
def test_merge_reshapes_refuses_a_runtime_shape():
    model = make_model(
        [
            helper.make_node("Reshape", ["x", "s1"], ["r1"], name="first"),
            helper.make_node("Reshape", ["r1", "runtime_shape"], ["y"], name="second"),
        ],
        {"x": (F, [2, 3]), "runtime_shape": (I64, [1])},
        {"y": (F, ["n"])},
        {"s1": np.array([3, 2], np.int64)},
    )
    graph, records = run_pipeline("merge-reshapes", model, verify=False)
    assert op_sequence(graph) == ["Reshape", "Reshape"]
    assert refusal_reasons(records, "merge-reshapes") == [
        "Reshape 'second' has a shape or axes computed at run time"
    ]


def test_cleanup_graph_text_is_stable():
    """Running a cleanup twice gives the same text as running it once (nothing left to do)."""
    graph, _ = run_pipeline("eliminate-identity,merge-reshapes", _no_op_model())
    again = EdgeGraph.from_onnx(graph.to_onnx())
    rerun, records = run_pipeline("eliminate-identity,merge-reshapes", again.to_onnx())
    assert not any(r.changed for r in records)
    assert rerun.text() == graph.text()
