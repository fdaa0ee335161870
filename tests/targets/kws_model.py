"""A keyword-spotting-style model for the integer tests: a Conv1d front end, a hard-swish (Add,
Clip, two Mul), a self-attention step (two MatMuls of activations and a Softmax) and a classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.helpers import make_model

F = TensorProto.FLOAT
FEATURES, FRAMES = 8, 32


def kws_model(seed: int = 0) -> onnx.ModelProto:
    """``[1, 8, 32]`` features → Conv1d 8→16 (pad 1) → Relu → Conv1d 16→16 (stride 2) →
    hard-swish → attention over 16 frames → Flatten → Gemm → ``[1, 10]`` logits."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1]),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1], strides=[2]),
        node("Add", ["c2", "three"], ["a2"], name="hs_add"),
        node("Clip", ["a2", "zero", "six"], ["k2"], name="hs_clip"),
        node("Mul", ["c2", "k2"], ["m2"], name="hs_mul"),
        node("Mul", ["m2", "sixth"], ["h2"], name="hs_scale"),
        node("Transpose", ["h2"], ["t"], name="to_frames", perm=[0, 2, 1]),
        node("MatMul", ["t", "h2"], ["scores"], name="attn"),
        node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
        node("MatMul", ["p", "t"], ["ctx"], name="attn_ctx"),
        node("Flatten", ["ctx"], ["f"], name="flatten"),
        node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = {
        "w1": w(16, FEATURES, 3), "b1": w(16, scale=0.1), "w2": w(16, 16, 3), "b2": w(16, scale=0.1),
        "three": np.array(3, np.float32), "zero": np.array(0, np.float32), "six": np.array(6, np.float32),
        "sixth": np.array(1 / 6, np.float32), "wf": w(10, 256, scale=0.05), "bf": w(10, scale=0.1),
    }  # fmt: skip
    return make_model(nodes, {"x": (F, [1, FEATURES, FRAMES])}, {"y": (F, [1, 10])}, inits, name="kws")


def write_kws(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The model and 16 calibration samples written to ``folder``; returns their paths."""
    model, calib = folder / "kws.onnx", folder / "kws_calib.npz"
    onnx.save(kws_model(seed), str(model))
    samples = np.random.default_rng(seed + 1).standard_normal((16, 1, FEATURES, FRAMES)).astype(np.float32)
    np.savez(calib, x=samples)
    return model, calib
