"""bias-correction: corrected biases, lower quantized error on the digits CNN, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgec.errors import EdgecError
from edgec.ir import op_sequence
from edgec.verify import run_onnx_batch
from tests.helpers import covers, make_model, rng, run_pipeline
from tests.passes.quantization.models import digits, normal_samples

F = TensorProto.FLOAT


@covers("bias-correction", kind="structural")
def test_bias_correction_structure():
    model, calibration, _ = digits()
    graph, records = run_pipeline("fuse-conv-bn,bias-correction{bits=4}", model, calibration=calibration)
    stats = records[-1].stats
    assert op_sequence(graph) == [
        "Conv",
        "Relu",
        "Conv",
        "Relu",
        "MaxPool",
        "Conv",
        "Relu",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    ]
    assert stats["corrected"] == 4 and set(stats["max_shift"]) == {"conv1", "conv2", "conv3", "fc"}
    assert all(value > 0 for value in stats["max_shift"].values())
    assert stats["error"]["relative"] > 0  # the float model itself moves: it reports its drift


@covers("bias-correction", kind="numeric")
@pytest.mark.parametrize(
    ("bits", "scheme", "factor"),
    # measured: int4 weights 0.273 → 0.128 (2.1x); per-tensor int8 0.0237 → 0.0149 (1.6x)
    [(4, "weight-int4", 1.8), (8, "int8,per_channel=false", 1.3)],
)
def test_bias_correction_reduces_quantized_error(bits, scheme, factor):
    """Relative output error vs the original float model on the 450 test images falls by ``factor``."""
    model, calibration, test = digits()
    inputs = {"input": test["input"][:, None]}
    reference = run_onnx_batch(model, inputs)["logits"]

    def relative_error(pipeline: str) -> float:
        graph, _ = run_pipeline(pipeline, model, verify=False, calibration=calibration)
        got = run_onnx_batch(graph.to_onnx(), inputs)["logits"]
        return float(np.abs(got - reference).mean() / np.abs(reference).mean())

    per_channel = "false" if "per_channel=false" in scheme else "true"
    plain = relative_error(f"fuse-conv-bn,quantize{{scheme={scheme}}}")
    corrected = relative_error(
        f"fuse-conv-bn,bias-correction{{bits={bits},per_channel={per_channel}}},quantize{{scheme={scheme}}}"
    )
    assert plain / corrected > factor, (plain, corrected)


@covers("bias-correction", kind="negative")
def test_bias_correction_refuses_and_errors():
    r = rng(0)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        {"x": (F, [2, 8])},
        {"y": (F, [2, 4])},
        {"w": r.normal(0, 1, (8, 4)).astype(np.float32)},
    )
    _, records = run_pipeline("bias-correction", model, verify=False, calibration=normal_samples(model, 4))
    assert not records[0].changed
    assert "no bias" in records[0].stats["refused"][0]["reason"]
    with pytest.raises(EdgecError, match="calibration data"):
        run_pipeline("bias-correction", model, verify=False)
    with pytest.raises(EdgecError, match="must be 8, 4, 2 or 1"):
        run_pipeline("bias-correction{bits=3}", model, verify=False)
