"""``prune-magnitude`` and ``prune-nm``: the smallest weights go, the N:M pattern holds along each
layer's reduction axis, shapes stay, and what is left alone says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager, parse_pipeline
from edgec.verify import random_inputs, run_onnx
from tests.helpers import covers
from tests.passes.pruning.models import Net, outputs_equal, prune, weight

X = {"x": [1, 8, 6, 6]}


def _net(conv_in: int = 8) -> Net:
    """Conv(8→8) → Relu → Conv(8→4) → Flatten → Gemm(144→4, transB) → MatMul(4→8)."""
    net = Net()
    c = net.op("Relu", [net.conv("x", conv_in, 8, "conv1")], "relu")
    flat = net.op("Flatten", [net.conv(c, 8, 4, "conv2")], "flatten")
    g = net.gemm(flat, 144, 4, "fc")
    net.op("MatMul", [g, net.const("proj", net.rng.normal(0, 1, (4, 8)).astype(np.float32))], "mm")
    return net


def _layers(conv_in: int = 8) -> onnx.ModelProto:
    return _net(conv_in).model({"x": [1, conv_in, 6, 6]}, {"mm": [1, 8]})


WEIGHTS = {"conv1": "conv1.w", "conv2": "conv2.w", "fc": "fc.w", "mm": "proj"}


@covers("prune-magnitude", kind="structural")
def test_magnitude_zeros_the_smallest_weights_of_each_layer_and_keeps_shapes():
    model = _layers()
    before = EdgeGraph.from_onnx(model)
    graph, stats = prune(model, "prune-magnitude{sparsity=0.75}")
    assert [n.op for n in graph.nodes] == [n.op for n in before.nodes]
    for name in ("conv1", "conv2", "fc", "mm"):
        original, pruned = weight(before, name), weight(graph, name)
        assert pruned.shape == original.shape
        assert np.mean(pruned == 0) == pytest.approx(0.75, abs=0.01)
        kept = np.abs(original[pruned != 0])
        assert kept.min() >= np.abs(original[pruned == 0]).max()
        np.testing.assert_array_equal(pruned[pruned != 0], original[pruned != 0])
    assert stats["sparsity"][1] == pytest.approx(0.75, abs=0.01)
    assert {row["node"] for row in stats["layers"]} == {"conv1", "conv2", "fc", "mm"}
    assert stats["error"]["relative"] > 0 and stats["error_data"] == "random"


def test_global_magnitude_ranks_every_layer_together():
    net = Net()
    c = net.op("Relu", [net.conv("x", 8, 8, "conv1")], "relu")
    net.conv(c, 8, 4, "conv2")
    w = net.inits["conv2.w"]
    net.inits["conv2.w"] = np.sign(w) * (10 + np.abs(w))  # conv2's weights all outrank conv1's
    graph, _ = prune(net.model(X, {"conv2": [1, 4, 6, 6]}), "prune-magnitude{sparsity=0.5,scope=global}")
    # 50% of 864 weights = 432: all 576 of conv1 are smaller than any of conv2's.
    assert np.mean(weight(graph, "conv1") == 0) == pytest.approx(432 / 576)
    assert np.all(weight(graph, "conv2") != 0)


def _blocks_of(weights: np.ndarray, axis: int, m: int) -> np.ndarray:
    return np.moveaxis(weights, axis, -1).reshape(-1, m)


@covers("prune-nm", kind="structural")
def test_nm_keeps_the_largest_n_of_every_m_along_the_reduction_axis():
    model = _layers()
    before = EdgeGraph.from_onnx(model)
    graph, stats = prune(model, "prune-nm{n=2,m=4}")
    # Reduction axes: Conv input channels (1), Gemm K with transB (1), MatMul K (0).
    for name, axis in (("conv1", 1), ("conv2", 1), ("fc", 1), ("mm", 0)):
        pruned = _blocks_of(weight(graph, name), axis, 4)
        original = _blocks_of(weight(before, name), axis, 4)
        assert np.all((pruned != 0).sum(axis=1) == 2), name
        smallest_kept = np.where(pruned != 0, np.abs(original), np.inf).min(axis=1)
        largest_dropped = np.where(pruned == 0, np.abs(original), -np.inf).max(axis=1)
        assert np.all(smallest_kept >= largest_dropped), name
    assert all(row["pattern"] == "2:4" for row in stats["layers"])
    assert stats["sparsity"][1] == pytest.approx(0.5)


@covers("prune-nm", kind="negative")
def test_nm_leaves_a_layer_whose_reduction_axis_is_not_a_multiple_of_m():
    graph, stats = prune(_layers(conv_in=3), "prune-nm{n=1,m=4}")
    assert {
        "node": "conv1",
        "op": "Conv",
        "reason": "its reduction axis has 3 weights, not a multiple of 4",
    } in (stats["left_alone"])
    assert np.all(weight(graph, "conv1") != 0)
    assert np.mean(weight(graph, "conv2") == 0) == pytest.approx(0.75)


@covers("prune-magnitude", kind="negative")
def test_computed_and_skipped_weights_are_left_alone_with_the_reason():
    net = Net()
    c = net.op("Relu", [net.conv("x", 8, 8, "conv1")], "relu")
    net.op("Conv", [net.conv(c, 8, 4, "conv2"), "w3"], "conv3")
    model = net.model({**X, "w3": [2, 4, 1, 1]}, {"conv3": [1, 2, 6, 6]})
    graph, stats = prune(model, "prune-magnitude{sparsity=0.5,skip=conv1}")
    assert stats["left_alone"] == [
        {"node": "conv1", "op": "Conv", "reason": "skipped (skip option)"},
        {"node": "conv3", "op": "Conv", "reason": "its weight is computed (prune before quantizing)"},
    ]
    assert np.all(weight(graph, "conv1") != 0)


def test_a_shared_weight_is_pruned_once_for_every_reader():
    net = Net()
    w = net.const("shared", net.rng.normal(0, 1, (8, 8)).astype(np.float32))
    net.op("MatMul", [net.op("MatMul", ["x", w], "mm1"), w], "mm2")
    graph, stats = prune(net.model({"x": [2, 8]}, {"mm2": [2, 8]}), "prune-magnitude{sparsity=0.5}")
    assert graph.node("mm1").inputs[1] is graph.node("mm2").inputs[1]
    assert [row["node"] for row in stats["layers"]] == ["mm1"]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("prune-magnitude{sparsity=1}", r"sparsity 1.0 must be in \[0, 1\)"),
        ("prune-magnitude{sparsity=-0.5}", r"sparsity -0.5 must be in \[0, 1\)"),
        ("prune-nm{n=4,m=4}", "needs 0 < n < m"),
        ("prune-nm{n=0}", "needs 0 < n < m"),
    ],
)
@covers("prune-magnitude", kind="negative")
@covers("prune-nm", kind="negative")
def test_bad_options_are_clear_errors(pipeline, message):
    with pytest.raises(EdgecError, match=message):
        parse_pipeline(pipeline)


def test_zero_sparsity_changes_nothing():
    graph = EdgeGraph.from_onnx(_layers())
    run = PassManager("prune-magnitude{sparsity=0}", PassContext()).run(graph)
    assert not run.records[-1].changed and run.graph is graph


@covers("prune-magnitude", kind="numeric")
def test_magnitude_reports_the_error_onnxruntime_measures_and_keeps_sparse_enough_layers():
    net = _net()
    for name in WEIGHTS.values():
        values = net.inits[name]
        values.ravel()[net.rng.permutation(values.size)[: values.size // 2]] = 0
    model = net.model({"x": [1, 8, 6, 6]}, {"mm": [1, 8]})
    already = EdgeGraph.from_onnx(model)
    run = PassManager("prune-magnitude{sparsity=0.5}", PassContext()).run(already)
    assert not run.records[-1].changed and run.graph is already
    graph, stats = prune(model, "prune-magnitude{sparsity=0.7}")
    # The reported error: the pruned against the original model on the pass's 8 seeded inputs.
    feeds = [random_inputs(EdgeGraph.from_onnx(model), seed=i) for i in range(8)]
    worst = max(
        float(np.abs(run_onnx(graph.to_onnx(), f)["mm"] - run_onnx(model, f)["mm"]).max()) for f in feeds
    )
    assert stats["error"]["max_abs"] == pytest.approx(worst, rel=1e-5)


@covers("prune-nm", kind="numeric")
def test_nm_is_exact_on_weights_already_two_in_four():
    net = _net()
    for layer, name in WEIGHTS.items():
        axis = {"conv1": 1, "conv2": 1, "fc": 1, "mm": 0}[layer]
        blocks = np.moveaxis(net.inits[name], axis, -1)
        blocks[..., 1::4] = 0
        blocks[..., 2::4] = 0
    model = net.model({"x": [1, 8, 6, 6]}, {"mm": [1, 8]})
    graph, stats = prune(model, "prune-nm{n=2,m=4}")
    outputs_equal(model, graph)
    assert stats["sparsity"] == [0.5, 0.5]
