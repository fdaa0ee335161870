"""simplify (onnxslim on import) and the ``import`` pipeline: structure, numerics, fallback.

Numeric tolerance: fp32 lossless, ``atol=1e-5, rtol=1e-4`` (STYLE.md), plus the pass manager's
verification against onnxruntime (on in every test here).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph, fix_input_shapes, freeze_inputs, op_sequence
from edgec.pm import PassContext, PassManager, all_pipelines
from edgec.verify import run_onnx
from tests.helpers import FP32_ATOL, FP32_RTOL, assert_same_outputs, covers, make_model

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def reshape_chain_model() -> onnx.ModelProto:
    """Flatten computed at run time: ``Reshape(x, Concat(Gather(Shape(x), 0), [-1]))``."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    return make_model(
        nodes,
        {"x": (F, ["N", 3, 4, 4])},
        {"y": (F, ["N", 48])},
        {
            "zero": np.array(0, np.int64),
            "axes": np.array([0], np.int64),
            "minus_one": np.array([-1], np.int64),
        },
    )


def _graph(model: onnx.ModelProto) -> EdgeGraph:
    return EdgeGraph.from_onnx(onnx.ModelProto.FromString(model.SerializeToString()))


@covers("simplify", kind="structural")
@covers("simplify", kind="numeric")
def test_simplify_makes_a_runtime_reshape_static() -> None:
    model = reshape_chain_model()
    graph = _graph(model)
    fix_input_shapes(graph, {"x": (2, 3, 4, 4)})
    fixed = graph.to_onnx()
    run = PassManager("simplify", PassContext(verify=True)).run(graph)
    record = run.records[0]
    assert record.changed
    assert op_sequence(run.graph) == ["Reshape", "Relu"]
    assert isinstance(run.graph.nodes[0].inputs[1], gs.Constant)
    assert record.stats["nodes_before"] == 6 and record.stats["nodes_after"] == 2
    assert record.stats["removed"] == {"Concat": 1, "Gather": 1, "Shape": 1, "Unsqueeze": 1}
    assert record.max_abs_error is not None and record.max_abs_error <= FP32_ATOL
    assert_same_outputs(fixed, run.graph.to_onnx(), atol=FP32_ATOL, rtol=FP32_RTOL)


def _branch(name: str, nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, F, [2, 3])])


def nested_if_model() -> onnx.ModelProto:
    """``If(sr == 16000)`` whose then-branch holds ``If(rank(x) == 2)``; like a streaming audio
    model branching on its sample-rate input and on an input's rank."""
    inner = helper.make_node(
        "If",
        ["is_rank2"],
        ["inner_out"],
        name="rank_if",
        then_branch=_branch("rank2", [helper.make_node("Relu", ["x"], ["r2"])], "r2"),
        else_branch=_branch("rank_other", [helper.make_node("Identity", ["x"], ["ro"])], "ro"),
    )
    then_nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Size", ["x_shape"], ["x_rank"]),
        helper.make_node("Equal", ["x_rank", "two"], ["is_rank2"]),
        inner,
        helper.make_node("Mul", ["inner_out", "k"], ["t_out"]),
    ]
    nodes = [
        helper.make_node("Equal", ["sr", "sr_16k"], ["is_16k"]),
        helper.make_node(
            "If",
            ["is_16k"],
            ["y0"],
            name="rate_if",
            then_branch=_branch("rate_16k", then_nodes, "t_out"),
            else_branch=_branch("rate_8k", [helper.make_node("Neg", ["x"], ["e_out"])], "e_out"),
        ),
        helper.make_node("Add", ["y0", "x"], ["y"]),
    ]
    return make_model(
        nodes,
        {"x": (F, [2, 3]), "sr": (I64, [])},
        {"y": (F, [2, 3])},
        {"two": np.array(2, np.int64), "sr_16k": np.array(16000, np.int64), "k": np.array(2.0, np.float32)},
    )


@pytest.mark.parametrize(("rate", "ops"), [(16000, ["Relu", "Mul", "Add"]), (8000, ["Neg", "Add"])])
def test_nested_if_folds_once_the_input_is_frozen(rate: int, ops: list[str]) -> None:
    model = nested_if_model()
    graph = _graph(model)
    assert freeze_inputs(graph, {"sr": rate}) == {"sr": rate}
    run = PassManager("simplify", PassContext(verify=True)).run(graph)
    assert op_sequence(run.graph) == ops  # both Ifs inlined by onnxslim, the rank one too
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    expected = run_onnx(model, {"x": x, "sr": np.array(rate, np.int64)})["y"]
    np.testing.assert_allclose(run_onnx(run.graph.to_onnx(), {"x": x})["y"], expected, atol=FP32_ATOL)


def test_if_on_a_live_input_stays() -> None:
    run = PassManager("simplify", PassContext(verify=True)).run(_graph(nested_if_model()))
    assert "If" in op_sequence(run.graph)


@covers("simplify", kind="negative")
def test_onnxslim_failure_keeps_the_graph_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxslim

    def broken(model: onnx.ModelProto) -> onnx.ModelProto:
        raise KeyError("some_tensor")

    monkeypatch.setattr(onnxslim, "slim", broken)
    warnings: list[str] = []
    graph = _graph(nested_if_model())
    before = graph.text()
    run = PassManager("simplify", PassContext(verify=True, warn=warnings.append)).run(graph)
    assert not run.records[0].changed
    assert run.graph.text() == before
    assert len(warnings) == 1 and "onnxslim could not simplify the model (KeyError" in warnings[0]
    assert "unsimplified graph" in run.records[0].stats["skipped"]


def test_simplify_keeps_an_unused_input_declared() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": (F, [2]), "unused": (F, [1])},
        {"y": (F, [2])},
    )
    run = PassManager("simplify", PassContext(verify=True)).run(_graph(model))
    assert [t.name for t in run.graph.inputs] == ["x", "unused"]


def _count_slim_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import onnxslim

    runs: list[int] = []
    slim = onnxslim.slim

    def counting(model: onnx.ModelProto) -> onnx.ModelProto:
        runs.append(len(model.graph.node))
        return slim(model)

    monkeypatch.setattr(onnxslim, "slim", counting)
    return runs


def test_simplify_runs_onnxslim_again_only_after_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _count_slim_runs(monkeypatch)
    graph = _graph(reshape_chain_model())
    fix_input_shapes(graph, {"x": (2, 3, 4, 4)})
    run = PassManager("simplify,inline-constant-if,simplify", PassContext(verify=True)).run(graph)
    assert runs == [6]  # onnxslim iterates to its own fixed point: nothing left for a second run
    first, _, second = run.records
    assert first.changed and not second.changed
    assert second.stats["skipped"] == "unchanged since simplified"
    # A changed graph is simplified again: here an Identity inserted before the Relu.
    relu = next(node for node in run.graph.nodes if node.op == "Relu")
    moved = gs.Variable("moved", dtype=np.float32)
    run.graph.gs.nodes.append(gs.Node("Identity", inputs=[relu.inputs[0]], outputs=[moved]))
    relu.inputs[0] = moved
    again = PassManager("simplify", PassContext(verify=True)).run(run.graph)
    assert runs == [6, 3] and again.records[0].changed
    assert op_sequence(again.graph) == ["Reshape", "Relu"]


def test_simplify_runs_again_after_new_input_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _count_slim_runs(monkeypatch)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, ["n"])}, {"y": (F, ["n"])})
    graph = _graph(model)
    fix_input_shapes(graph, {"x": (2,)})
    graph = PassManager("simplify", PassContext(verify=True)).run(graph).graph
    graph.inputs[0].shape = [3]
    PassManager("simplify", PassContext(verify=True)).run(graph)
    assert runs == [1, 1]


def test_simplify_keeps_the_graph_it_was_given_when_onnxslim_changes_nothing() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], {"x": (F, [2])}, {"y": (F, [2])}
    )
    graph = _graph(model)
    run = PassManager("simplify", PassContext(verify=True)).run(graph)
    assert not run.records[0].changed and run.graph is graph


def test_import_pipeline_removes_if_and_lstm() -> None:
    assert "import" in all_pipelines()
    assert not all_pipelines()["import"].fixed_point
    rng = np.random.default_rng(0)
    lstm = helper.make_node("LSTM", ["x3", "W", "R"], ["", "h"], hidden_size=4)
    branch_nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["x3"]), lstm]
    then_branch = helper.make_graph(
        [*branch_nodes, helper.make_node("Squeeze", ["h", "axes"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", F, [2, 4])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes1"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", F, [2, 4])],
    )
    model = make_model(
        [
            helper.make_node("Equal", ["mode", "one"], ["c"]),
            helper.make_node(
                "If", ["c"], ["y"], name="mode_if", then_branch=then_branch, else_branch=else_branch
            ),
        ],
        {"x": (F, [2, 5]), "mode": (I64, [])},
        {"y": (F, [2, 4])},
        {
            "W": rng.standard_normal((1, 16, 5)).astype(np.float32),
            "R": rng.standard_normal((1, 16, 4)).astype(np.float32),
            "axes": np.array([0], np.int64),
            "axes1": np.array([1], np.int64),
            "starts": np.array([0], np.int64),
            "ends": np.array([4], np.int64),
            "one": np.array(1, np.int64),
        },
    )
    graph = _graph(model)
    freeze_inputs(graph, {"mode": 1})
    run = PassManager("import", PassContext(verify=True)).run(graph)
    ops = op_sequence(run.graph)
    assert "If" not in ops and "LSTM" not in ops
    x = rng.standard_normal((2, 5)).astype(np.float32)
    expected = run_onnx(model, {"x": x, "mode": np.array(1, np.int64)})["y"]
    got = run_onnx(run.graph.to_onnx(), {"x": x})["y"]
    np.testing.assert_allclose(got, expected, atol=FP32_ATOL, rtol=FP32_RTOL)
