"""Reference execution and error metrics."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.verify import accuracy, error_metrics, random_inputs, run_onnx
from tests.conftest import conv_bn_relu_model


def test_error_metrics() -> None:
    reference = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([[0.0, 1.0]])}
    candidate = {"a": np.array([1.0, 2.5, 3.0]), "b": np.array([[0.0, 1.0]])}
    metrics = error_metrics(reference, candidate)
    assert metrics.max_abs == 0.5
    assert metrics.mean_abs == pytest.approx(0.1)
    assert 0.98 < metrics.cosine < 1.0
    assert error_metrics(reference, reference).cosine == pytest.approx(1.0)


def test_accuracy() -> None:
    logits = np.array([[[0.1, 0.9]], [[0.8, 0.2]], [[0.3, 0.7]]])
    assert accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_random_inputs_are_seeded_and_typed() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    first, again, other = random_inputs(graph, 1), random_inputs(graph, 1), random_inputs(graph, 2)
    assert first["x"].dtype == np.float32 and first["x"].shape == (1, 3, 8, 8)
    assert np.array_equal(first["x"], again["x"]) and not np.array_equal(first["x"], other["x"])


def test_onnxruntime_failures_are_user_errors() -> None:
    model = conv_bn_relu_model()
    with pytest.raises(EdgecError, match="onnxruntime failed to run"):
        run_onnx(model, {"x": np.zeros((1, 3, 9, 9), np.float32)})
