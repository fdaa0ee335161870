"""``prune-sensitivity`` (a table per group and ratio, the graph untouched) and the budgeted search
of ``prune-channels`` (an accuracy budget on labelled data, a MACs target)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager, parse_pipeline
from tests.helpers import DIGITS, covers
from tests.passes.pruning.models import Net

X = {"x": [1, 4, 8, 8]}


def _model() -> onnx.ModelProto:
    """conv1 has four dead channels of eight; conv2's eight are all alive."""
    net = Net()
    a = net.op("Relu", [net.conv("x", 4, 8, "conv1", dead=(0, 1, 2, 3))], "relu1")
    b = net.op("Relu", [net.conv(a, 8, 8, "conv2")], "relu2")
    net.conv(b, 8, 3, "conv3")
    return net.model(X, {"conv3": [1, 3, 8, 8]})


@covers("prune-sensitivity", kind="structural")
def test_sensitivity_table_has_every_group_and_ratio_and_leaves_the_graph_alone():
    graph = EdgeGraph.from_onnx(_model())
    text = graph.text()
    run = PassManager("prune-sensitivity{ratios=0.25:0.5:0.75}", PassContext()).run(graph)
    record = run.records[-1]
    assert not record.changed and run.graph.text() == text
    rows = {row["origins"][0]: row for row in record.stats["table"]}
    assert set(rows) == {"conv1", "conv2"}  # conv3's output is the model's
    assert list(rows["conv1"]["metric"]) == ["0.25", "0.5", "0.75"]
    # Removing conv1's dead channels costs nothing; conv2's channels all matter.
    assert rows["conv1"]["metric"]["0.25"] < 1e-6 and rows["conv1"]["metric"]["0.5"] < 1e-6
    assert rows["conv1"]["metric"]["0.75"] > 0.01 and rows["conv2"]["metric"]["0.25"] > 0.01
    assert rows["conv2"]["macs"]["0.5"] < rows["conv2"]["macs"]["0.25"]
    assert record.stats["metric"] == "error" and "conv1" in record.stats["text"]


@covers("prune-sensitivity", kind="numeric")
def test_a_groups_sensitivity_is_the_error_of_pruning_that_group_alone():
    graph = EdgeGraph.from_onnx(_model())
    run = PassManager("prune-sensitivity{ratios=0.25}", PassContext()).run(graph)
    rows = {row["origins"][0]: row for row in run.records[-1].stats["table"]}
    alone = PassManager("prune-channels{ratio=0.25,skip=conv1}", PassContext()).run(graph).records[-1].stats
    assert rows["conv2"]["metric"]["0.25"] == pytest.approx(alone["error"]["relative"])
    assert rows["conv2"]["macs"]["0.25"] == alone["macs"][1]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("prune-sensitivity{ratios=0:0.5}", "ratios must be in"),
        ("prune-sensitivity{ratios=0.5:1.2}", "ratios must be in"),
    ],
)
@covers("prune-sensitivity", kind="negative")
def test_bad_ratios_are_clear_errors(pipeline, message):
    with pytest.raises(EdgecError, match=message):
        parse_pipeline(pipeline)


@covers("prune-sensitivity", kind="negative")
def test_an_accuracy_metric_needs_labelled_data():
    graph = EdgeGraph.from_onnx(_model())
    with pytest.raises(EdgecError, match="needs labelled evaluation data"):
        PassManager("prune-sensitivity{metric=accuracy}", PassContext()).run(graph)


def test_an_error_budget_prunes_only_what_costs_nothing():
    graph = EdgeGraph.from_onnx(_model())
    run = PassManager("prune-channels{budget=0.001}", PassContext()).run(graph)
    stats = run.records[-1].stats
    assert stats["budget"]["met"] and stats["budget"]["ratios"] == {"conv1": 0.5}
    assert stats["error"]["max_abs"] < 1e-5


def test_a_macs_target_is_reached():
    graph = EdgeGraph.from_onnx(_model())
    run = PassManager("prune-channels{target_macs=0.6}", PassContext()).run(graph)
    budget = run.records[-1].stats["budget"]
    assert budget["targets_met"] and budget["macs"][1] <= 0.6 * budget["macs"][0]


def test_digits_within_one_point_of_accuracy():
    model = onnx.load(str(DIGITS / "digits_cnn.onnx"))
    evaluation = dict(np.load(DIGITS / "digits_test.npz"))
    calibration = dict(np.load(DIGITS / "digits_calib.npz"))
    graph = PassManager("default", PassContext()).run(EdgeGraph.from_onnx(model)).graph
    ctx = PassContext(evaluation=evaluation, calibration=calibration)
    stats = PassManager("prune-channels{budget=0.01}", ctx).run(graph).records[-1].stats
    assert stats["budget"]["met"] and stats["accuracy"]["drop"] <= 0.01
    assert stats["mac_reduction"] > 0.05
