"""Real architectures from the onnx wheel, compiled for x86 and run through ``edgec run``.

Weights are seeded random (``edgec.zoo``); the final Softmax is dropped so that the comparison
sees logits, not an almost one-hot distribution. Bound: fp32, atol 1e-4 (the foundation issue).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec.ir import EdgeGraph
from edgec.run import run_build
from edgec.verify import random_inputs, run_onnx
from edgec.zoo import light_model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "resnet50", "inception_v1"])
def test_light_model_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    model = light_model(name, logits=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path))
    result = edgec.compile(path, tmp_path / "build", target="x86")
    assert result.manifest["error"]["artifact_vs_original"]["max_abs"] < 1e-4

    feeds = random_inputs(EdgeGraph.from_onnx(model), seed=7)
    np.savez(tmp_path / "x.npz", **feeds)
    outputs, _ = run_build(tmp_path / "build", tmp_path / "x.npz")
    expected = run_onnx(model, feeds)
    for key, value in expected.items():
        assert np.abs(value).max() > 0.1  # the logits are not degenerate
        np.testing.assert_allclose(outputs[key], value, atol=1e-4, rtol=0, err_msg=key)
    if name == "resnet50":
        ops = {n.op_type for n in onnx.load(str(tmp_path / "build" / "optimized.onnx")).graph.node}
        assert "BatchNormalization" not in ops
