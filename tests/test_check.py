"""check_model: every node that cannot be lowered after the import path, with its fix."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.check import CheckReport, Problem, check_model
from edgec.errors import Fix, UnsupportedNodeError
from edgec.ir import EdgeGraph, freeze_inputs
from tests.helpers import make_model
from tests.passes.test_control_flow import loop_model
from tests.passes.test_recurrent import recurrent_model

pytest.importorskip("edgec.targets.tvm.frontend", reason="check_model asks the TVM lowering what it supports")

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _graph(model: onnx.ModelProto) -> EdgeGraph:
    return EdgeGraph.from_onnx(onnx.ModelProto.FromString(model.SerializeToString()))


def _by_node(report: CheckReport) -> dict[str, Problem]:
    return {problem.node: problem for problem in report.problems}


def test_supported_model_is_ok_and_untouched() -> None:
    model = recurrent_model("GRU", "bidirectional", True)
    graph = _graph(model)
    before = graph.text()
    report = check_model(graph, "x86")
    assert report.ok, report.lines()
    assert report.target == "x86"
    assert report.nodes_before == 1 and report.nodes_after > 1  # GRU decomposed on the way
    assert graph.text() == before
    report.raise_if_unsupported()  # no error
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_lstm_with_sequence_lens_is_named_with_the_fix() -> None:
    report = check_model(_graph(recurrent_model("LSTM", extra_inputs={4: "lens"})))
    problem = _by_node(report)["lstm0"]
    assert problem.op == "LSTM"
    assert problem.fix == Fix(advice="export the model without sequence_lens on LSTM")
    with pytest.raises(UnsupportedNodeError) as info:
        report.raise_if_unsupported()
    assert str(info.value).startswith("LSTM 'lstm0': LSTM with sequence_lens is not supported")
    assert info.value.fix == problem.fix
    assert str(info.value).endswith("; fix: export the model without sequence_lens on LSTM")


def test_op_without_lowering() -> None:
    model = make_model(
        [helper.make_node("Det", ["x"], ["y"], name="det0")], {"x": (F, [3, 3])}, {"y": (F, [])}
    )
    problem = _by_node(check_model(_graph(model)))["det0"]
    assert (problem.op, problem.fix) == ("Det", Fix(advice="edgec has no lowering for op Det"))


def test_symbolic_input_asks_for_a_shape() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, ["N", 3])}, {"y": (F, ["N", 3])})
    problem = _by_node(check_model(_graph(model)))["x"]
    assert (problem.fix.flag, problem.fix.value) == ("--input-shape", "x=1x...")


def _rate_switched_lstm() -> onnx.ModelProto:
    """An LSTM in the 16 kHz branch of ``If(sr == 16000)``: lowerable only once sr is frozen."""
    lstm_model = recurrent_model("LSTM", outputs=(False, True), seq=4, batch=1, input_size=3, hidden=4)
    lstm = lstm_model.graph.node[0]
    then_branch = helper.make_graph(
        [
            lstm,
            helper.make_node("Squeeze", ["Y_h", "zero"], ["t_out"]),
        ],
        "rate_16k",
        [],
        [helper.make_tensor_value_info("t_out", F, [1, 4])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Slice", ["X", "zero", "one", "zero"], ["x0"]),
            helper.make_node("Squeeze", ["x0", "zero"], ["x1"]),
            helper.make_node("Pad", ["x1", "pads"], ["e_out"]),
        ],
        "rate_8k",
        [],
        [helper.make_tensor_value_info("e_out", F, [1, 4])],
    )
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in lstm_model.graph.initializer}
    initializers.update(
        {
            "zero": np.array([0], np.int64),
            "one": np.array([1], np.int64),
            "pads": np.array([0, 0, 0, 1], np.int64),
            "sr_16k": np.array(16000, np.int64),
        }
    )
    return make_model(
        [
            helper.make_node("Equal", ["sr", "sr_16k"], ["is_16k"]),
            helper.make_node(
                "If", ["is_16k"], ["y"], name="rate_if", then_branch=then_branch, else_branch=else_branch
            ),
        ],
        {"X": (F, [4, 1, 3]), "sr": (I64, [])},
        {"y": (F, [1, 4])},
        initializers,
    )


def test_op_in_a_branch_asks_to_freeze_the_input_it_branches_on() -> None:
    model = _rate_switched_lstm()
    problem = _by_node(check_model(_graph(model)))["lstm0"]
    assert problem.op == "LSTM"
    assert (problem.fix.flag, problem.fix.value) == ("--freeze-input", "sr=VALUE")
    assert "so that If 'rate_if' folds away" in problem.fix.advice
    frozen = _graph(model)
    freeze_inputs(frozen, {"sr": 16000})
    assert check_model(frozen).ok


def test_every_problem_is_reported_in_one_run() -> None:
    loop = loop_model(trip_input=True)
    det = helper.make_node("Det", ["square"], ["det"], name="det0")
    reshape = helper.make_node("Reshape", ["acc", "shape_in"], ["reshaped"], name="reshape0")
    graph = loop.graph
    graph.node.extend([det, reshape])
    graph.input.extend(
        [
            helper.make_tensor_value_info("square", F, [3, 3]),
            helper.make_tensor_value_info("shape_in", I64, [2]),
        ]
    )
    graph.output.extend(
        [helper.make_tensor_value_info("det", F, []), helper.make_tensor_value_info("reshaped", F, None)]
    )
    report = check_model(_graph(loop))
    problems = _by_node(report)
    assert set(problems) == {"loop0", "det0", "reshape0"}
    assert "trip count 'n' is data-dependent" in problems["loop0"].reason
    assert (problems["loop0"].fix.flag, problems["loop0"].fix.value) == ("--freeze-input", "n=VALUE")
    assert (problems["reshape0"].fix.flag, problems["reshape0"].fix.value) == (
        "--freeze-input",
        "shape_in=VALUE",
    )
    lines = report.lines()
    assert len(lines) == 3 and all("fix: " in line for line in lines)
    as_json = json.loads(json.dumps(report.as_dict()))
    assert as_json["ok"] is False
    assert {p["node"] for p in as_json["problems"]} == {"loop0", "det0", "reshape0"}
    assert set(as_json["problems"][0]) == {"node", "op", "reason", "fix"}
    assert set(as_json["problems"][0]["fix"]) == {"flag", "value", "advice"}
