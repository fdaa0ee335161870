"""``prune-channels``: structural, numeric and negative tests, criteria, scopes, ``round_to``, bias
compensation, and the light models of the onnx wheel (slow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec.capabilities import Capabilities
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager, parse_pipeline
from edgec.zoo import light_model
from tests.helpers import covers
from tests.passes.pruning.models import Net, outputs_equal, prune, weight

X = {"x": [1, 4, 8, 8]}


def _two_layers(channels: int = 8, dead=()) -> onnx.ModelProto:
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, channels, "conv1", dead=dead)], "relu")
    net.conv(c, channels, 3, "conv2")
    return net.model(X, {"conv2": [1, 3, 8, 8]})


@covers("prune-channels", kind="structural")
def test_printed_graph_shows_the_smaller_weights_and_the_same_ops():
    model = _two_layers(dead=(0, 3))
    before = EdgeGraph.from_onnx(model).text()
    graph, stats = prune(model, "prune-channels{ratio=0.25}")
    after = graph.text()
    assert "@conv1.w<float32[8,4,3,3]>" in before and "conv1.w_1<float32[6,4,3,3]>" in after
    assert "conv2.w_3<float32[3,6,3,3]>" in after
    assert [line.split("=")[1].split("(")[0] for line in before.splitlines()[2:-1]] == [
        line.split("=")[1].split("(")[0] for line in after.splitlines()[2:-1]
    ]
    conv1 = next(row for row in stats["layers"] if row["node"] == "conv1")
    assert conv1["out_channels"] == [8, 6] and conv1["macs"] == [18432, 13824]
    assert conv1["params"] == [296, 222] and conv1["weight_bytes"] == [1184, 888]
    assert stats["mac_reduction"] == pytest.approx(0.25)


@covers("prune-channels", kind="numeric")
def test_outputs_do_not_move_when_dead_channels_go_and_the_error_is_reported():
    model = _two_layers(dead=(2, 5))
    graph, stats = prune(model, "prune-channels{ratio=0.25}")
    outputs_equal(model, graph)
    assert stats["error"]["max_abs"] < 1e-5 and stats["error_data"] == "random"


@covers("prune-channels", kind="numeric")
def test_compensation_moves_a_constant_channel_into_the_next_bias():
    # conv1's channel 2 has zero weights but bias 0.7: after ReLU it is the constant 0.7, and the
    # 1x1 conv2 reads it everywhere. Removing it without compensation shifts conv2's outputs.
    net = Net()
    c = net.conv("x", 4, 8, "conv1")
    net.inits["conv1.w"][2] = 0
    net.inits["conv1.b"][2] = 0.7
    net.conv(net.op("Relu", [c], "relu"), 8, 3, "conv2", k=1)
    model = net.model(X, {"conv2": [1, 3, 8, 8]})
    calibration = {"x": np.random.default_rng(1).normal(size=(4, 1, 4, 8, 8)).astype(np.float32)}
    pipeline = "prune-channels{ratio=0.125,skip=conv2}"
    compensated, stats = prune(model, pipeline, calibration=calibration)
    assert stats["compensation"] == "calibration data"
    outputs_equal(model, compensated)
    plain, _ = prune(model, pipeline.replace("}", ",compensate=false}"), calibration=calibration)
    with pytest.raises(AssertionError):
        outputs_equal(model, plain)


def test_bn_gamma_ranks_channels_by_their_batchnorm_scale():
    net = Net()
    c = net.bn(net.conv("x", 4, 8, "conv1"), 8, "bn1")
    net.inits["bn1.s"][:] = [1.0, 0.01, 1.0, 1.0, 0.02, 1.0, 1.0, 1.0]
    net.conv(net.op("Relu", [c], "relu"), 8, 3, "conv2")
    model = net.model(X, {"conv2": [1, 3, 8, 8]})
    graph, _ = prune(model, "prune-channels{ratio=0.25,criterion=bn-gamma}")
    assert list(weight(graph, "bn1")) == [1.0] * 6


@covers("prune-channels", kind="negative")
def test_bn_gamma_without_batchnorm_leaves_every_group_alone():
    graph = EdgeGraph.from_onnx(_two_layers())
    run = PassManager("prune-channels{criterion=bn-gamma}", PassContext()).run(graph)
    record = run.records[-1]
    assert not record.changed and record.stats["channels_removed"] == 0
    assert (
        "criterion bn-gamma has nothing to rank these channels by" in record.stats["left_alone"][0]["reason"]
    )


def test_round_to_keeps_channel_counts_at_multiples():
    graph, stats = prune(_two_layers(channels=12), "prune-channels{ratio=0.3,round_to=4}")
    assert weight(graph, "conv1").shape[0] == 8 and stats["round_to_from"] == "option"


def test_round_to_defaults_to_the_targets_float_lanes():
    model = _two_layers(channels=16)
    wide = Capabilities("avx2-host", vector_bits=256)
    graph, stats = prune(model, "prune-channels{ratio=0.3}", capabilities=wide)
    assert stats["round_to"] == 8 and stats["round_to_from"] == "target avx2-host"
    assert weight(graph, "conv1").shape[0] == 8
    _, stats = prune(model, "prune-channels{ratio=0.3}")
    assert stats["round_to"] == 1 and stats["round_to_from"] == "no target"


def test_global_scope_ranks_every_group_together():
    net = Net()
    a = net.op("Relu", [net.conv("x", 4, 8, "conv1")], "relu1")
    b = net.op("Relu", [net.conv(a, 8, 8, "conv2")], "relu2")
    # conv2's channels 0-3 are ten times smaller than the rest: globally they go first.
    net.inits["conv2.w"][:4] *= 0.1
    net.conv(b, 8, 3, "conv3")
    graph, stats = prune(net.model(X, {"conv3": [1, 3, 8, 8]}), "prune-channels{ratio=0.25,scope=global}")
    assert stats["channels_removed"] == 4
    assert weight(graph, "conv2").shape[0] == 4 and weight(graph, "conv1").shape[0] == 8


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("prune-channels{ratio=1.0}", "ratio 1.0 must be in [0, 1)"),
        ("prune-channels{ratio=-0.1}", "ratio -0.1 must be in [0, 1)"),
        ("prune-channels{ratio=0.3,budget=0.01}", "either ratio"),
        ("prune-channels{criterion=taylor}", "'taylor' is not one of l1, l2, bn-gamma"),
        ("prune-channels{round_to=0}", "round_to must be at least 1"),
        ("prune-channels{target_macs=1.5}", "target_macs is the fraction"),
    ],
)
@covers("prune-channels", kind="negative")
def test_bad_options_are_clear_errors(pipeline, message):
    with pytest.raises(EdgecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_pipeline(pipeline)


def test_a_skip_pattern_that_names_no_node_is_an_error():
    graph = EdgeGraph.from_onnx(_two_layers())
    with pytest.raises(EdgecError, match="skip pattern 'conv9' names no node"):
        PassManager("prune-channels{skip=conv9}", PassContext()).run(graph)


@covers("prune-channels", kind="negative")
def test_a_ratio_that_would_remove_every_channel_keeps_one():
    net = Net()
    single = net.conv(net.op("Relu", [net.conv("x", 4, 8, "conv1")], "relu"), 8, 1, "conv2")
    net.conv(single, 1, 3, "conv3")
    graph, stats = prune(net.model(X, {"conv3": [1, 3, 8, 8]}), "prune-channels{ratio=0.6}")
    assert weight(graph, "conv2").shape[0] == 1 and weight(graph, "conv1").shape[0] == 3
    notes = [n for n in stats["left_alone"] if n["origins"] == ["conv2"]]
    assert notes == [
        {"group": 1, "origins": ["conv2"], "reason": "ratio 0.6 would remove every channel; keeps 1"}
    ]


@covers("prune-channels", kind="negative")
def test_layers_the_analysis_cannot_see_through_are_listed_and_the_graph_stays_valid():
    net = Net()
    c = net.conv("x", 4, 8, "conv1")
    net.op("DepthToSpace", [c], "d2s", blocksize=2)
    net.conv(net.op("Relu", [net.conv(c, 8, 8, "conv2")], "relu"), 8, 3, "conv3")
    model = net.model(X, {"d2s": [1, 2, 16, 16], "conv3": [1, 3, 8, 8]})
    graph, stats = prune(model, "prune-channels{ratio=0.5}")
    assert weight(graph, "conv1").shape[0] == 8 and weight(graph, "conv2").shape[0] == 4
    reasons = {n["origins"][0]: n["reason"] for n in stats["left_alone"] if "stay" in n}
    assert reasons["conv1"] == "DepthToSpace 'd2s' is an op the channel analysis does not see through"


def test_nothing_prunable_leaves_the_graph_unchanged():
    net = Net()
    net.conv("x", 4, 3, "conv1")
    graph = EdgeGraph.from_onnx(net.model(X, {"conv1": [1, 3, 8, 8]}))
    text = graph.text()
    run = PassManager("prune-channels{ratio=0.5}", PassContext()).run(graph)
    assert not run.records[-1].changed and run.graph.text() == text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "resnet50", "inception_v1", "densenet121", "shufflenet"])
def test_light_models_lose_at_least_35_percent_of_macs_at_30_percent_channels(name):
    graph = EdgeGraph.from_onnx(light_model(name, logits=True))
    graph = PassManager("import", PassContext()).run(graph).graph
    model = graph.to_onnx()
    _, stats = prune(model, "prune-channels{ratio=0.3}")
    assert stats["mac_reduction"] >= 0.35 and stats["param_reduction"] >= 0.35


@pytest.mark.parametrize(
    ("target", "lanes"), [("cortex-a53", 4), ("cortex-m55", 4), ("cortex-m4", 1), ("x86-64-v3", 8)]
)
def test_targets_declare_the_vector_width_round_to_follows(target, lanes):
    from edgec.targets import get_target

    _, stats = prune(
        _two_layers(channels=16), "prune-channels{ratio=0.3}", capabilities=get_target(target).capabilities()
    )
    assert stats["round_to"] == lanes
