"""The shipped digits CNN (examples/digits) is accurate and reproducible from train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

DIGITS_DIR = Path(__file__).resolve().parents[2] / "examples" / "digits"


def _metrics() -> dict:
    return json.loads((DIGITS_DIR / "metrics.json").read_text())


def test_shipped_model_accuracy():
    metrics = _metrics()
    sess = ort.InferenceSession(str(DIGITS_DIR / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    data = np.load(DIGITS_DIR / "digits_test.npz")
    x, label = data["input"], data["label"]
    assert x.shape == (metrics["test_samples"], 1, 8, 8) and x.dtype == np.float32
    assert label.dtype == np.int64
    preds = np.array([int(sess.run(["logits"], {"input": x[i : i + 1]})[0].argmax()) for i in range(len(x))])
    acc = float((preds == label).mean())
    assert acc >= metrics["test_accuracy"] - 0.001


def test_shipped_calibration_set():
    calib = np.load(DIGITS_DIR / "digits_calib.npz")["input"]
    assert calib.shape == (200, 1, 8, 8) and calib.dtype == np.float32
    assert calib.min() >= 0.0 and calib.max() <= 1.0


@pytest.mark.slow
def test_train_script_reproduces_shipped_files(tmp_path):
    """The data files are byte-identical. The trained weights depend on the CPU's floating-point
    kernels (BLAS), so across machines the model must match in structure and accuracy (on the
    machine that trained it, train.py reproduces it byte for byte)."""
    subprocess.run(
        [sys.executable, str(DIGITS_DIR / "train.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    for name in ("digits_test.npz", "digits_calib.npz"):
        assert (tmp_path / name).read_bytes() == (DIGITS_DIR / name).read_bytes(), name
    import onnx

    rebuilt, shipped = (
        onnx.load(str(tmp_path / "digits_cnn.onnx")),
        onnx.load(str(DIGITS_DIR / "digits_cnn.onnx")),
    )
    assert [(n.name, n.op_type) for n in rebuilt.graph.node] == [
        (n.name, n.op_type) for n in shipped.graph.node
    ]
    rebuilt_accuracy = json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"]
    assert abs(rebuilt_accuracy - _metrics()["test_accuracy"]) <= 0.01
