"""cross-layer-equalization: rescaled weights, same function, lower int8 error; refusals."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgec.ir import op_sequence
from edgec.verify import run_onnx_batch
from tests.helpers import covers, make_model, rng, run_pipeline
from tests.passes.quantization.models import badly_scaled_model, normal_samples

F = TensorProto.FLOAT


def _channel_ranges(graph, node_name: str) -> np.ndarray:
    weight = next(n for n in graph.nodes if n.name == node_name).inputs[1].values
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


@covers("cross-layer-equalization", kind="structural")
def test_equalization_structure():
    graph, records = run_pipeline("cross-layer-equalization", badly_scaled_model())
    assert op_sequence(graph) == ["Conv", "Relu", "Conv"]
    ranges = _channel_ranges(graph, "conv1")
    stats = records[0].stats
    assert stats["pairs"] == 1
    # 10^4 spread of conv1's channel ranges before; nearly even after (sqrt(r1 r2) per channel).
    assert stats["channel_range_spread_before"] > 1000
    assert ranges.max() / ranges.min() < 10 and stats["channel_range_spread_after"] < 10


@covers("cross-layer-equalization", kind="numeric")
def test_equalization_is_exact_and_reduces_int8_error():
    """run_pipeline verifies the lossless rewrite (fp32 atol 1e-5, rtol 1e-4); the int8 relative
    output error on held-out data falls by at least 20x (measured: 1.01 → 0.0186, 54x)."""
    model = badly_scaled_model()
    calibration = normal_samples(model, 32, seed=1)
    held = normal_samples(model, 32, seed=2)
    reference = run_onnx_batch(model, held)["y"]

    def relative_error(pipeline: str) -> float:
        graph, _ = run_pipeline(pipeline, model, calibration=calibration)
        got = run_onnx_batch(graph.to_onnx(), held)["y"]
        return float(np.abs(got - reference).mean() / np.abs(reference).mean())

    plain = relative_error("quantize")
    equalized = relative_error("cross-layer-equalization,quantize")
    assert plain > 0.5 and equalized < 0.05 and plain / equalized > 20


@covers("cross-layer-equalization", kind="negative")
def test_equalization_refuses_non_homogeneous_activation():
    r = rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
            helper.make_node("Sigmoid", ["c1"], ["s1"], name="sigmoid"),
            helper.make_node("Conv", ["s1", "w2"], ["y"], name="conv2"),
        ],
        {"x": (F, [1, 2, 4, 4])},
        {"y": (F, [1, 2, 4, 4])},
        {
            "w1": r.normal(0, 1, (3, 2, 1, 1)).astype(np.float32),
            "w2": r.normal(0, 1, (2, 3, 1, 1)).astype(np.float32),
        },
    )
    graph, records = run_pipeline("cross-layer-equalization", model)
    assert not records[0].changed and records[0].stats["pairs"] == 0
    reasons = {item["node"]: item["reason"] for item in records[0].stats["refused"]}
    assert "not positively homogeneous" in reasons["conv1"]
    original = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(graph.node("conv1").inputs[1].values, original)
