"""Small models and data for the quantization tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.helpers import DIGITS, make_model, rng

F = TensorProto.FLOAT


def digits() -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The shipped digits CNN, its 200 calibration images and its labelled 450-image test set."""
    model = onnx.load(str(DIGITS / "digits_cnn.onnx"))
    calibration = dict(np.load(DIGITS / "digits_calib.npz"))
    test = dict(np.load(DIGITS / "digits_test.npz"))
    return model, calibration, test


def badly_scaled_model(seed: int = 0) -> onnx.ModelProto:
    """Conv(4→8) → Relu → Conv(8→4): conv1's output channels are scaled by 10^-2 … 10^2 (as a
    BatchNorm fold can leave them), so one per-tensor activation scale crushes the small channels."""
    r = rng(seed)
    scales = np.logspace(-2, 2, 8).astype(np.float32)
    w1 = r.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32) * scales[:, None, None, None]
    b1 = r.normal(0, 0.1, 8).astype(np.float32) * scales
    w2 = r.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32) / scales[None, :, None, None]
    b2 = r.normal(0, 0.1, 4).astype(np.float32)
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
        ],
        {"x": (F, [1, 4, 8, 8])},
        {"y": (F, [1, 4, 8, 8])},
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        name="badly_scaled",
    )


def gemm_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,16] → Gemm(W[8,16], b, transB=1) → y[1,8]."""
    r = rng(seed)
    return make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
        {"x": (F, [1, 16])},
        {"y": (F, [1, 8])},
        {"w": r.normal(0, 0.5, (8, 16)).astype(np.float32), "b": r.normal(0, 0.2, 8).astype(np.float32)},
        name="gemm",
    )


def matmul_model(seed: int = 0) -> onnx.ModelProto:
    """x[4,32] → MatMul(W[32,16]) → Add(b) → Relu → MatMul(W2[16,8]) → y[4,8]."""
    r = rng(seed)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
            helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
            helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
            helper.make_node("MatMul", ["r1", "w2"], ["y"], name="mm2"),
        ],
        {"x": (F, [4, 32])},
        {"y": (F, [4, 8])},
        {
            "w1": r.normal(0, 0.2, (32, 16)).astype(np.float32),
            "b1": r.normal(0, 0.1, 16).astype(np.float32),
            "w2": r.normal(0, 0.3, (16, 8)).astype(np.float32),
        },
        name="mlp",
    )


def normal_samples(
    model: onnx.ModelProto, count: int, seed: int = 0, mean: float = 0.0
) -> dict[str, np.ndarray]:
    """``count`` seeded normal samples for each (static-shaped) input of ``model``."""
    r = rng(seed)
    out = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        out[value.name] = (r.standard_normal((count, *shape)) + mean).astype(np.float32)
    return out
