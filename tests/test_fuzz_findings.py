"""Regression tests for what the fuzz campaign (tests/fuzz) found: each failed with a traceback."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from edgec.errors import VerificationError
from edgec.verify import error_metrics
from tests.conftest import conv_bn_relu_model
from tests.test_cli import assert_user_error, invoke


def test_npz_member_that_is_not_an_array(cli, model_path: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", b"not an array")
    (tmp_path / "bad.npz").write_bytes(buffer.getvalue())
    np.save(tmp_path / "plain.npy", np.zeros((1, 3, 8, 8), np.float32))
    for data in ("bad.npz", "plain.npy"):
        result = invoke(cli, "compile", model_path, "-o", tmp_path / "b", "--inputs", tmp_path / data, "-q")
        assert_user_error(result, "not a readable .npz file")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("how", ["long", "external short"])
def test_initializer_data_that_does_not_fill_its_shape(cli, tmp_path: Path, how: str) -> None:
    # The ONNX checker catches data too short for its shape in the file, not these two.
    model = conv_bn_relu_model()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    if how == "long":
        weight.raw_data = weight.raw_data + b"\0" * 8
    else:
        (tmp_path / "w.bin").write_bytes(weight.raw_data[:100])
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value="w.bin")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / "b", "-q"), "'w'", "declares shape")
    assert_user_error(invoke(cli, "inspect", path), "'w'", "declares shape")
    assert not (tmp_path / "b").exists()


def test_external_data_with_a_negative_offset(cli, tmp_path: Path) -> None:
    model = conv_bn_relu_model()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    (tmp_path / "w.bin").write_bytes(weight.raw_data)
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="w.bin")
    weight.external_data.add(key="offset", value="-1")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert_user_error(invoke(cli, "inspect", path), "malformed external data", "offset")


def test_outputs_that_overflow_to_inf_still_verify(cli, tmp_path: Path) -> None:
    model = conv_bn_relu_model()
    fc = next(t for t in model.graph.initializer if t.name == "fc_w")
    fc.raw_data = np.full((4, 8), 3e38, np.float32).tobytes()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    result = invoke(cli, "compile", path, "-o", tmp_path / "b", "-q", "--json")
    assert result.exit_code == 0, result.stderr
    assert "NaN" not in result.output and "Infinity" not in result.output


def test_error_metrics_with_non_finite_values() -> None:
    ref = {"y": np.array([1.0, np.inf, np.nan, 2.0])}
    same = error_metrics(ref, {"y": np.array([1.5, np.inf, np.nan, 2.0])})
    assert same.max_abs == pytest.approx(0.5)
    with pytest.raises(VerificationError, match="1 of 4 output values"):
        error_metrics(ref, {"y": np.array([1.0, np.inf, 3.0, 2.0])})
