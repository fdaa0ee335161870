"""The figures a build reports: measured against the untouched original model (frozen inputs fed),
on datasets that follow the model's declared batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import edgec.evaluate
from tests.helpers import make_model
from tests.test_cli import invoke

F, BOOL = TensorProto.FLOAT, TensorProto.BOOL


def gated_model() -> onnx.ModelProto:
    """``y = If(mode, 2 * relu(x), sigmoid(x))``: an ``If`` straight on an input, as streaming
    exports branch on a sample rate or a mode flag."""
    then_branch = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["relu"], name="relu"),
            helper.make_node("Mul", ["relu", "two"], ["doubled"], name="double"),
        ],
        "when_on",
        [],
        [helper.make_tensor_value_info("doubled", F, [1, 16])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["squashed"], name="sigmoid")],
        "when_off",
        [],
        [helper.make_tensor_value_info("squashed", F, [1, 16])],
    )
    gate = helper.make_node(
        "If", ["mode"], ["y"], name="gate", then_branch=then_branch, else_branch=else_branch
    )
    return make_model(
        [gate],
        {"x": (F, [1, 16]), "mode": (BOOL, [])},
        {"y": (F, [1, 16])},
        {"two": np.float32(2.0)},
        name="gate",
    )


@pytest.mark.parametrize("mode", [True, False])
def test_the_reference_is_the_unfrozen_original_with_the_frozen_value_fed(
    mode: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--freeze-input mode=...`` folds the ``If`` away in the build; onnxruntime still runs the
    model file as given, with ``mode`` fed at every run (never the graph with ``mode`` as an
    initializer, which crashes onnxruntime 1.32 on real exports)."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "gate.onnx"
    onnx.save_model(gated_model(), str(path))
    calls = []
    run_onnx_batch = edgec.evaluate.run_onnx_batch

    def spy(model, feeds, purpose):
        calls.append((model, {k: np.asarray(v) for k, v in feeds.items()}, purpose))
        return run_onnx_batch(model, feeds, purpose)

    monkeypatch.setattr(edgec.evaluate, "run_onnx_batch", spy)
    flag = "true" if mode else "false"
    result = invoke(
        CliRunner(), "compile", path, "--freeze-input", f"mode={flag}", "-o", tmp_path / "b", "--json"
    )
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.output)
    assert manifest["error"]["reference"] == "gate.onnx as given, run by onnxruntime, frozen inputs fed: mode"
    assert manifest["error"]["artifact_vs_original"]["max_abs"] <= 1e-6
    model, feeds, _ = next(call for call in calls if call[2] == "the original model (the reference)")
    assert model == path and sorted(feeds) == ["mode", "x"]
    assert feeds["mode"].shape == (1,) and feeds["mode"].dtype == np.bool_ and bool(feeds["mode"][0]) is mode
    # The other models onnxruntime ran (the optimized graph) have no If and no 'mode' input.
    optimized = next(call for call in calls if call[2] == "the optimized model")
    assert sorted(optimized[1]) == ["x"]
    assert "If" not in [n.op_type for n in onnx.load(str(tmp_path / "b" / "optimized.onnx")).graph.node]


def mnist_like_model(seed: int = 0) -> onnx.ModelProto:
    """A small MNIST-shaped CNN with a dynamic batch: ``x: [batch, 1, 28, 28] -> logits: [batch, 10]``."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    weights = {
        "w": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32),
        "b": rng.normal(0, 0.1, 4).astype(np.float32),
        "fc_w": rng.normal(0, 0.2, (10, 4 * 7 * 7)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, 10).astype(np.float32),
    }
    return make_model(
        nodes, {"x": (F, ["batch", 1, 28, 28])}, {"logits": (F, ["batch", 10])}, weights, name="mnist"
    )


@pytest.mark.slow
def test_datasets_follow_the_declared_batch(tmp_path: Path) -> None:
    """Compiled at batch 2000, the dynamic-batch model takes 200 calibration images [200,1,28,28]
    (one run, 1800 rows repeated) and 2100 labelled ones (two runs); accuracy counts each image once."""
    from edgec.verify import run_onnx

    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "mnist.onnx"
    model = mnist_like_model()
    onnx.save_model(model, str(path))
    images = np.random.default_rng(1).random((2100, 1, 28, 28), dtype=np.float32)
    # Labels the float model gets right on the first 2000 images only: the original scores 2000/2100,
    # which counting a repeated row once more, or an image twice, would change.
    labels = run_onnx(model, {"x": images})["logits"].argmax(axis=1)
    labels[2000:] = (labels[2000:] + 1) % 10
    np.savez(folder / "calib.npz", x=images[:200])
    np.savez(folder / "test.npz", x=images, label=labels)
    args = [
        "compile",
        path,
        "--input-shape",
        "x=2000x1x28x28",
        "--quantize",
        "int8",
        "--calib",
        folder / "calib.npz",
    ]
    result = invoke(CliRunner(), *args, "--eval", folder / "test.npz", "-o", tmp_path / "b", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.output)
    assert manifest["data"] == {
        "calib": {"file": "calib.npz", "samples": 200, "batch": 2000, "runs": 1, "repeated": 1800},
        "eval": {"file": "test.npz", "samples": 2100, "batch": 2000, "runs": 2, "repeated": 1900},
    }
    quantize = next(record for record in manifest["passes"] if record["name"] == "quantize")
    assert quantize["stats"]["calibration_samples"] == 200
    assert quantize["stats"]["calibration_runs"] == {"batch": 2000, "runs": 1, "repeated": 1800}
    accuracy = manifest["error"]["accuracy"]
    assert accuracy["samples"] == 2100 and accuracy["original"] == pytest.approx(2000 / 2100)
    assert accuracy["artifact"] >= accuracy["original"] - 0.05  # int8 of a random CNN: close, not equal
    assert manifest["inputs"][0]["shape"] == [2000, 1, 28, 28]
