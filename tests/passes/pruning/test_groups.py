"""The ``channel-groups`` analysis: one test per coupling kind, the Torch-Pruning bug cases
(#481 concat groups, #126 one-channel conv, #159 residual groups), and what must stay, with the
reason. Where a coupling changes weights, dead channels are pruned and the outputs must not move."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from edgec.ir import EdgeGraph
from edgec.pm import AnalysisManager, PassContext, PassManager
from tests.passes.pruning.models import Net, group_with, groups_of, members, outputs_equal, prune, weight

X = {"x": [1, 4, 8, 8]}


def _chain(dead=()) -> Net:
    net = Net()
    c = net.conv("x", 4, 8, "conv1", dead=dead)
    r = net.op("Relu", [net.bn(c, 8, "bn1")], "relu1")
    net.conv(r, 8, 6, "conv2")
    return net


def test_chain_couples_producer_batchnorm_activation_and_consumer():
    groups = groups_of(_chain().model(X, {"conv2": [1, 6, 8, 8]}))
    first = group_with(groups, "conv1")
    assert len(first.units) == 8 and first.prunable == 8
    assert members(first) == {"conv1": 8, "bn1": 8, "relu1": 8, "conv2": 8}
    assert {use.node: use.role for use, _ in first.members} == {
        "conv1": "produces",
        "bn1": "normalizes",
        "relu1": "forwards",
        "conv2": "consumes",
    }
    last = group_with(groups, "conv2")
    assert last.prunable == 0 and "'conv2' is a model output (its shape stays)" in last.reasons


def test_dead_channels_of_a_chain_are_removed_without_changing_the_outputs():
    model = _chain(dead=(1, 4)).model(X, {"conv2": [1, 6, 8, 8]})
    graph, stats = prune(model, "prune-channels{ratio=0.25}")
    assert weight(graph, "conv1").shape == (6, 4, 3, 3)
    assert weight(graph, "conv2").shape == (6, 6, 3, 3)
    assert weight(graph, "bn1").shape == (6,)
    outputs_equal(model, graph)
    assert stats["channels_removed"] == 2 and stats["error"]["max_abs"] < 1e-5


def _resnet(dead=()) -> Net:
    """stem → two residual blocks (conv_a → relu → conv_b, + shortcut) → pool → flatten → fc."""
    net = Net()
    trunk = net.op("Relu", [net.conv("x", 4, 8, "stem", dead=dead)], "stem_relu")
    for block in (1, 2):
        a = net.op("Relu", [net.conv(trunk, 8, 8, f"b{block}a", dead=dead)], f"b{block}a_relu")
        b = net.conv(a, 8, 8, f"b{block}b", dead=dead)
        trunk = net.op("Relu", [net.op("Add", [b, trunk], f"b{block}add")], f"b{block}relu")
    flat = net.op("Flatten", [net.op("GlobalAveragePool", [trunk], "pool")], "flatten")
    net.gemm(flat, 8, 3, "fc")
    return net


def test_residual_group_holds_every_branch_that_adds_into_it():
    # Torch-Pruning#159: each block's second conv belongs to the residual group, with the stem and
    # the classifier's input; each block's first conv has its own group.
    groups = groups_of(_resnet().model(X, {"fc": [1, 3]}))
    residual = group_with(groups, "stem")
    assert residual.origins == ["stem", "b1b", "b2b"]
    assert members(residual, "consumes") == {"b1a": 8, "b2a": 8, "fc": 8}
    assert residual.prunable == 8
    assert group_with(groups, "b1a").origins == ["b1a"]


def test_residual_dead_channels_go_from_every_branch():
    model = _resnet(dead=(0, 5)).model(X, {"fc": [1, 3]})
    graph, _ = prune(model, "prune-channels{ratio=0.25}")
    for conv in ("stem", "b1b", "b2b"):
        assert weight(graph, conv).shape[:2] == (6, 6 if conv != "stem" else 4)
    assert weight(graph, "fc").shape == (3, 6)
    outputs_equal(model, graph)


def test_concatenated_layers_stay_separate_groups():
    # Torch-Pruning#481: two layers concatenated into one consumer are two groups, the consumer a
    # member of both with its own range of channels.
    net = Net()
    left = net.gemm("x", 6, 3, "linear")
    right = net.op("Relu", [net.gemm("x", 6, 5, "mlp")], "mlp_relu")
    net.gemm(net.op("Concat", [left, right], "concat", axis=1), 8, 1, "lin2")
    model = net.model({"x": [2, 6]}, {"lin2": [2, 1]})
    groups = groups_of(model)
    linear, mlp = group_with(groups, "linear"), group_with(groups, "mlp")
    assert linear is not mlp
    assert members(linear, "consumes") == {"lin2": 3} and members(mlp, "consumes") == {"lin2": 5}
    graph, _ = prune(model, "prune-channels{ratio=0.4}")
    assert weight(graph, "lin2").shape == (1, 5)  # 3 → 2 and 5 → 3 input columns
    assert weight(graph, "linear").shape == (2, 6) and weight(graph, "mlp").shape == (3, 6)


def test_concatenating_a_tensor_with_itself_couples_both_copies():
    net = Net()
    c = net.conv("x", 4, 6, "conv1", dead=(2,))
    net.conv(net.op("Concat", [c, c], "concat", axis=1), 12, 4, "conv2")
    model = net.model(X, {"conv2": [1, 4, 8, 8]})
    graph, _ = prune(model, "prune-channels{ratio=0.17}")
    assert weight(graph, "conv2").shape == (4, 10, 3, 3)
    outputs_equal(model, graph)


def test_a_one_channel_conv_is_not_depthwise():
    # Torch-Pruning#126: a Conv with one output (or input) channel and one group is an ordinary
    # Conv; taking it for depthwise would tie its input channels to its (fixed) output.
    net = Net()
    c2 = net.op("Relu", [net.conv("x", 4, 8, "conv2")], "relu2")
    single = net.conv(c2, 8, 1, "conv3")
    net.conv(single, 1, 4, "conv4")
    groups = groups_of(net.model(X, {"conv4": [1, 4, 8, 8]}))
    assert group_with(groups, "conv2").prunable == 8
    one = group_with(groups, "conv3")
    assert len(one.units) == 1 and members(one) == {"conv3": 1, "conv4": 1}


def _mobile(dead=()) -> Net:
    """pointwise → depthwise (multiplier 2) → HardSwish → pointwise."""
    net = Net()
    pw = net.op("HardSwish", [net.conv("x", 4, 6, "pw1", k=1, dead=dead)], "hs1")
    w = net.rng.normal(0, 0.5, (12, 1, 3, 3)).astype(np.float32)
    dw = net.op("Conv", [pw, net.const("dw.w", w)], "dw", group=6, pads=[1, 1, 1, 1])
    net.conv(net.op("HardSwish", [dw], "hs2"), 12, 5, "pw2", k=1)
    return net


def test_depthwise_conv_links_its_input_to_its_outputs_and_shrinks_its_groups():
    model = _mobile(dead=(1,)).model(X, {"pw2": [1, 5, 8, 8]})
    group = group_with(groups_of(model), "pw1")
    assert members(group) == {"pw1": 6, "hs1": 6, "dw": 12, "hs2": 12, "pw2": 12}
    graph, _ = prune(model, "prune-channels{ratio=0.17}")
    assert graph.node("dw").attrs["group"] == 5 and weight(graph, "dw").shape == (10, 1, 3, 3)
    assert weight(graph, "pw2").shape == (5, 10, 1, 1)
    outputs_equal(model, graph)


def test_grouped_conv_loses_as_many_channels_in_every_group():
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, 8, "conv1", dead=(1, 2, 5, 6))], "relu")
    net.conv(c, 8, 4, "gconv", group=2)
    model = net.model(X, {"gconv": [1, 4, 8, 8]})
    groups = groups_of(model)
    assert ("relu", 2) in groups.balances
    graph, _ = prune(model, "prune-channels{ratio=0.5}")
    assert weight(graph, "gconv").shape == (4, 2, 3, 3) and graph.node("gconv").attrs["group"] == 2
    outputs_equal(model, graph)


def test_grouped_conv_never_loses_a_group_unevenly():
    # Dead channels all in the first group: removing them would leave the groups unequal, so the
    # selection takes as many from each group (here: the least important of the second too).
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, 8, "conv1", dead=(0, 1))], "relu")
    net.conv(c, 8, 4, "gconv", group=2)
    graph, _ = prune(net.model(X, {"gconv": [1, 4, 8, 8]}), "prune-channels{ratio=0.25}")
    assert weight(graph, "gconv").shape[1] * 2 == weight(graph, "conv1").shape[0]


def test_flatten_into_gemm_removes_a_block_of_spatial_positions_per_channel():
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, 6, "conv1", dead=(3,))], "relu")
    pooled = net.op("MaxPool", [c], "pool", kernel_shape=[2, 2], strides=[2, 2])
    net.gemm(net.op("Flatten", [pooled], "flatten"), 6 * 16, 5, "fc")
    model = net.model(X, {"fc": [1, 5]})
    group = group_with(groups_of(model), "conv1")
    assert groups_of(model).spaces["flatten"].block == 16
    assert members(group, "consumes") == {"fc": 6}
    graph, _ = prune(model, "prune-channels{ratio=0.17}")
    assert weight(graph, "fc").shape == (5, 80)
    outputs_equal(model, graph)


def test_split_and_slice_on_the_channel_axis_take_ranges_and_are_updated():
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, 8, "conv1", dead=(1, 6))], "relu")
    net.const("sizes", np.array([4, 4], np.int64))
    first, second = "split_0", "split_1"
    net.op("Split", [c, "sizes"], "split", outputs=2, axis=1)
    for bound, value in (("starts", 1), ("ends", 4), ("axes", 1)):
        net.const(bound, np.array([value], np.int64))
    sliced = net.op("Slice", [first, "starts", "ends", "axes"], "slice")
    net.conv(net.op("Concat", [sliced, second], "concat", axis=1), 7, 3, "conv2")
    model = net.model(X, {"conv2": [1, 3, 8, 8]})
    graph, _ = prune(model, "prune-channels{ratio=0.25}")
    assert weight(graph, "conv2").shape == (3, 5, 3, 3)
    assert list(np.asarray(graph.node("split").inputs[1].values)) == [3, 3]
    outputs_equal(model, graph)


def _shuffle(dead=()) -> Net:
    """grouped conv → channel shuffle (Reshape, Transpose, Reshape) → grouped conv."""
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, 8, "gconv1", k=1, group=2, dead=dead)], "relu")
    net.const("parted", np.array([1, 2, 4, 8, 8], np.int64))
    net.const("joined", np.array([1, 8, 8, 8], np.int64))
    r = net.op("Reshape", [c, "parted"], "reshape1")
    t = net.op("Transpose", [r], "transpose", perm=[0, 2, 1, 3, 4])
    net.conv(net.op("Reshape", [t, "joined"], "reshape2"), 8, 4, "gconv2", k=1, group=2)
    return net


def test_channel_shuffle_is_followed_and_removes_the_same_channel_of_every_part():
    # Channel j of both parts (1, 5 and 3, 7) becomes shuffled channels 2j, 2j+1: the dead ones
    # are even in both grouped convs' groups.
    model = _shuffle(dead=(1, 3, 5, 7)).model(X, {"gconv2": [1, 4, 8, 8]})
    group = group_with(groups_of(model), "gconv1")
    assert len(group.units) == 4
    assert members(group) == {"gconv1": 8, "relu": 8, "reshape1": 8, "reshape2": 8, "gconv2": 8}
    graph, _ = prune(model, "prune-channels{ratio=0.5}")
    assert list(np.asarray(graph.node("reshape1").inputs[1].values)) == [1, 2, 2, 8, 8]
    assert list(np.asarray(graph.node("reshape2").inputs[1].values)) == [1, 4, 8, 8]
    assert weight(graph, "gconv2").shape == (4, 2, 1, 1)
    outputs_equal(model, graph)


def test_transpose_to_channels_last_feeds_a_matmul_over_the_channels():
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, 6, "conv1", dead=(2,))], "relu")
    t = net.op("Transpose", [c], "nhwc", perm=[0, 2, 3, 1])
    net.op("MatMul", [t, net.const("proj", net.rng.normal(0, 1, (6, 5)).astype(np.float32))], "proj_mm")
    model = net.model(X, {"proj_mm": [1, 8, 8, 5]})
    assert groups_of(model).spaces["nhwc"].axis == 3
    graph, _ = prune(model, "prune-channels{ratio=0.17}")
    assert weight(graph, "proj_mm").shape == (5, 5)
    outputs_equal(model, graph)


def test_padding_pooling_resize_and_activations_pass_channels_through():
    net = Net()
    c = net.conv("x", 4, 6, "conv1", dead=(4,))
    net.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    p = net.op("Pad", [c, "pads"], "pad")
    m = net.op("MaxPool", [p], "pool", kernel_shape=[2, 2], strides=[2, 2])
    net.const("scales", np.array([1, 1, 2, 2], np.float32))
    s = net.op("Resize", [m, "", "scales"], "resize", mode="nearest")
    a = net.op("Clip", [net.op("HardSwish", [s], "hs")], "clip")
    net.conv(a, 6, 3, "conv2")
    model = net.model(X, {"conv2": [1, 3, 10, 10]})
    assert members(group_with(groups_of(model), "conv1"), "forwards") == {
        "pad": 6, "pool": 6, "resize": 6, "hs": 6, "clip": 6,
    }  # fmt: skip
    graph, _ = prune(model, "prune-channels{ratio=0.17}")
    outputs_equal(model, graph)


def test_per_channel_constants_are_cut_and_broadcast_operands_are_left():
    net = Net()
    c = net.conv("x", 4, 6, "conv1", dead=(0,))
    scale = net.const("scale", np.linspace(0.5, 1.5, 6, dtype=np.float32).reshape(1, 6, 1, 1))
    shift = net.const("shift", np.r_[0, np.linspace(-1, 1, 5)].astype(np.float32).reshape(6, 1, 1))
    whole = net.const("whole", np.array(2.0, np.float32))
    y = net.op("Mul", [net.op("Add", [net.op("Mul", [c, scale], "mul"), shift], "add"), whole], "mul2")
    net.conv(y, 6, 3, "conv2")
    model = net.model(X, {"conv2": [1, 3, 8, 8]})
    graph, _ = prune(model, "prune-channels{ratio=0.17}")
    assert weight(graph, "mul").shape == (1, 5, 1, 1) and weight(graph, "add").shape == (5, 1, 1)
    assert weight(graph, "mul2").shape == ()
    outputs_equal(model, graph)


def test_squeeze_excitation_couples_the_gate_with_the_channels_it_scales():
    net = Net()
    c = net.op("Relu", [net.conv("x", 4, 10, "conv1", dead=(5,))], "relu")
    pooled = net.op("GlobalAveragePool", [c], "gap")
    squeeze = net.op("Relu", [net.conv(pooled, 10, 3, "se1", k=1)], "se_relu")
    gate = net.op("Sigmoid", [net.conv(squeeze, 3, 10, "se2", k=1)], "gate")
    net.conv(net.op("Mul", [c, gate], "excite"), 10, 3, "conv2")
    model = net.model(X, {"conv2": [1, 3, 8, 8]})
    group = group_with(groups_of(model), "conv1")
    assert group.origins == ["conv1", "se2"]
    # The gate of a dead channel is sigmoid(bias) != 0, but it multiplies zeros.
    graph, _ = prune(model, "prune-channels{ratio=0.1}")
    assert weight(graph, "se2").shape == (9, 3, 1, 1) and weight(graph, "se1").shape == (3, 9, 1, 1)
    outputs_equal(model, graph)


@pytest.mark.parametrize(
    ("op", "attrs", "output", "reason"),
    [
        ("LRN", {"size": 3}, [1, 8, 8, 8], "LRN 'mix' mixes these channels"),
        ("Softmax", {"axis": 1}, [1, 8, 8, 8], "Softmax 'mix' mixes these channels"),
        ("DepthToSpace", {"blocksize": 2}, [1, 2, 16, 16], "DepthToSpace 'mix' is an op the channel"),
        ("Shape", {}, (TensorProto.INT64, [4]), "Shape 'mix' reads the channel count at run time"),
    ],
)
def test_ops_that_mix_or_read_channels_leave_the_group_alone(op, attrs, output, reason):
    net = Net()
    c = net.conv("x", 4, 8, "conv1")
    net.op(op, [c], "mix", **attrs)
    net.conv(c, 8, 3, "conv2")
    outputs = {"mix": output, "conv2": [1, 3, 8, 8]}
    group = group_with(groups_of(net.model(X, outputs)), "conv1")
    assert group.prunable == 0 and any(r.startswith(reason) for r in group.reasons)


def test_softmax_over_another_axis_passes_channels_through():
    net = Net()
    c = net.conv("x", 4, 8, "conv1")
    net.conv(net.op("Softmax", [c], "soft", axis=3), 8, 3, "conv2")
    assert group_with(groups_of(net.model(X, {"conv2": [1, 3, 8, 8]})), "conv1").prunable == 8


def test_a_conv_with_computed_weights_keeps_its_channels():
    net = Net()
    c = net.conv("x", 4, 8, "conv1")
    net.op("Conv", [c, "w2"], "conv2", pads=[1, 1, 1, 1])
    model = net.model({**X, "w2": [3, 8, 3, 3]}, {"conv2": [1, 3, 8, 8]})
    group = group_with(groups_of(model), "conv1")
    assert group.prunable == 0
    assert group.reasons == [
        "Conv 'conv2' has a non-constant weight (prune before quantizing, with constant float weights)"
    ]


def test_a_model_input_added_to_a_layer_keeps_its_channels():
    net = Net()
    net.conv(net.op("Add", [net.conv("x", 4, 4, "conv1"), "x"], "add"), 4, 3, "conv2")
    group = group_with(groups_of(net.model(X, {"conv2": [1, 3, 8, 8]})), "conv1")
    assert group.prunable == 0 and group.reasons == ["model input 'x' has a fixed shape"]


def test_the_analysis_is_cached_until_the_graph_changes():
    graph = EdgeGraph.from_onnx(_chain().model(X, {"conv2": [1, 6, 8, 8]}))
    analyses = AnalysisManager()
    first = analyses.get("channel-groups", graph)
    assert analyses.get("channel-groups", graph) is first
    assert analyses.computed["channel-groups"] == 1
    ctx = PassContext(analyses=analyses)
    PassManager("prune-channels{ratio=0.25}", ctx).run(graph)
    assert analyses.computed["channel-groups"] == 1  # the pass asked the manager, not recomputed


def test_a_gemm_that_reads_the_channels_as_rows_keeps_them():
    net = Net()
    features = net.op("Transpose", [net.gemm("x", 6, 4, "fc1")], "rows", perm=[1, 0])
    net.gemm(features, 2, 3, "fc2")
    group = group_with(groups_of(net.model({"x": [2, 6]}, {"fc2": [4, 3]})), "fc1")
    assert group.prunable == 0 and group.reasons == ["Gemm 'fc2' keeps these channels on its row axis"]
