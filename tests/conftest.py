"""Shared fixtures: small models written to a temporary folder, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tests.helpers import make_model


def conv_bn_relu_model(seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """Conv → BatchNormalization → Relu → GlobalAveragePool → Flatten → Gemm, seeded weights."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inits = {
        "w": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f32),
        "b": rng.normal(0, 0.1, 8).astype(f32),
        "g": rng.uniform(0.5, 1.5, 8).astype(f32),
        "beta": rng.normal(0, 0.1, 8).astype(f32),
        "mean": rng.normal(0, 0.1, 8).astype(f32),
        "var": rng.uniform(0.5, 1.5, 8).astype(f32),
        "fc_w": rng.normal(0, 0.3, (4, 8)).astype(f32),
        "fc_b": rng.normal(0, 0.1, 4).astype(f32),
    }
    return make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [batch, 3, 8, 8])},
        {"y": (TensorProto.FLOAT, [batch, 4])},
        inits,
        name="convnet",
    )


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    """A small Conv+BN+Relu classifier saved as ``models/convnet.onnx``."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "convnet.onnx"
    onnx.save_model(conv_bn_relu_model(), str(path))
    return path


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()
