"""The training loop: it learns, the exported ONNX has the accuracy reported, checkpoints, NaN stop."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.train.distill import fit
from edgec.train.engine import TrainConfig, check_samples
from edgec.train.export import accuracy_of, recompute_batchnorm
from edgec.train.graph import training_graph
from edgec.verify import run_onnx_batch
from tests.train.conftest import student_graph


@pytest.fixture(scope="module")
def trained(digits):
    return fit(student_graph(), digits["train"], TrainConfig(epochs=4, learning_rate=0.01), digits["test"])


def test_training_learns_and_keeps_the_best_checkpoint(trained):
    history = trained.history
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert history[-1].loss < history[0].loss
    assert trained.initial_accuracy < 0.3 and trained.accuracy > 0.6  # from chance to well above it
    assert trained.accuracy == max(r.accuracy for r in history)
    assert history[trained.best_epoch - 1].accuracy == trained.accuracy
    # edgec's CPU schedules, not TVM's defaults, compiled most training kernels.
    assert trained.kernels["scheduled"] > 0.8 * trained.kernels["compiled"]


def test_exported_onnx_has_the_accuracy_the_trainer_reported(trained, digits, tmp_path):
    from edgec.ir import load, save

    save(trained.graph, tmp_path / "trained.onnx")
    reloaded = load(tmp_path / "trained.onnx")
    test = digits["test"]
    assert accuracy_of(reloaded, {"input": test["input"]}, test["label"]) == trained.accuracy


def test_batchnorm_statistics_are_the_population_statistics(trained, digits):
    graph = trained.graph.copy()
    norm = next(n for n in graph.nodes if n.op == "BatchNormalization")
    probe = graph.copy()
    probe.gs.outputs = [probe.tensors()[norm.inputs[0].name]]
    values = run_onnx_batch(probe.to_onnx(), {"input": digits["train"]["input"]})[norm.inputs[0].name]
    np.testing.assert_allclose(norm.inputs[3].values, values.mean(axis=(0, 1, 3, 4)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.inputs[4].values, values.var(axis=(0, 1, 3, 4)), rtol=1e-3, atol=1e-5)
    norm.inputs[3].values = norm.inputs[3].values + 1.0
    assert recompute_batchnorm(graph, {"input": digits["train"]["input"]}) == 2
    np.testing.assert_allclose(norm.inputs[3].values, values.mean(axis=(0, 1, 3, 4)), rtol=1e-4, atol=1e-5)


def test_nan_loss_stops_and_keeps_the_best_checkpoint(digits):
    warnings = []
    result = fit(
        student_graph(),
        digits["train"],
        TrainConfig(epochs=3, learning_rate=1e30),
        digits["test"],
        warn=warnings.append,
    )
    assert result.stopped == "nan loss"
    assert result.best_epoch == 0 and result.accuracy == result.initial_accuracy
    assert "kept the best checkpoint (epoch 0" in warnings[0] and "lower learning rate" in warnings[0]
    assert all(np.isfinite(c.values).all() for c in result.graph.constants() if c.values.dtype.kind == "f")


def test_training_graph_takes_the_batch_and_only_weights_as_parameters():
    graph = training_graph(student_graph(), batch=16)
    model = graph.model
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 16
    trained = set(graph.sources.values())
    assert {"conv1.weight", "conv1.bias", "bn1.scale", "bn1.bias", "fc.weight"} <= trained
    assert not trained & {"bn1.mean", "bn1.var"}  # running statistics are constants


def test_bad_training_setups_are_refused(digits):
    with pytest.raises(EdgecError, match="fewer than one batch of 32; add data or lower the batch size"):
        check_samples({"input": digits["train"]["input"][:10]}, 32)
    with pytest.raises(EdgecError, match="batch size must be at least 2"):
        TrainConfig(batch_size=1)
    wide = student_graph()
    wide.inputs[0].shape = [4, 1, 8, 8]
    with pytest.raises(EdgecError, match="leading batch axis of size 1"):
        training_graph(wide, batch=8)


def test_clip_becomes_relus_and_an_op_without_gradient_is_named():
    from onnx import TensorProto, helper

    from edgec.ir import EdgeGraph, op_sequence
    from edgec.train.compiler import compile_step
    from edgec.train.losses import LossSpec
    from edgec.verify import run_onnx
    from tests.helpers import make_model

    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1),
        helper.make_node("Clip", ["h", "low", "high"], ["c"], name="relu6"),
        helper.make_node("Round", ["c"], ["y"], name="round"),
    ]
    weights = {"w": np.eye(3, dtype=np.float32), "low": np.float32(0), "high": np.float32(6)}
    model = make_model(nodes, {"x": (TensorProto.FLOAT, [1, 3])}, {"y": (TensorProto.FLOAT, [1, 3])}, weights)
    graph = training_graph(EdgeGraph.from_onnx(model), batch=4)
    ops = op_sequence(EdgeGraph.from_onnx(graph.model))
    assert "Clip" not in ops and ops.count("Relu") == 2 and ops[-1] == "Round"
    x = np.linspace(-3.1, 9.1, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(run_onnx(graph.model, {"x": x})["y"], np.round(np.clip(x, 0, 6)))
    with pytest.raises(EdgecError, match=r"no gradient for relax\.round in the model; edgec cannot train"):
        compile_step(graph, LossSpec(), {}, {}, {})


def test_early_stop_after_patience_epochs_without_a_better_evaluation(digits):
    # A rate too small to move the accuracy: the first epoch is no better than the start.
    config = TrainConfig(epochs=4, learning_rate=1e-12, patience=1)
    result = fit(student_graph(), digits["train"], config, digits["test"])
    assert result.stopped == "early stop" and len(result.history) == 1
    assert result.best_epoch == 0 and result.accuracy == result.initial_accuracy
