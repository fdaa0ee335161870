"""Regression tests for what the fuzz campaign (tests/fuzz) found: each failed with a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
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


@pytest.mark.parametrize(("where", "dtype"), [("input", 99), ("input", 0), ("output", 0)])
def test_element_types_onnx_does_not_define(cli, tmp_path: Path, where: str, dtype: int) -> None:
    model = conv_bn_relu_model()
    getattr(model.graph, where)[0].type.tensor_type.elem_type = dtype
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    for command in (["check", path], ["inspect", path], ["compile", path, "-o", tmp_path / "b", "-q"]):
        assert_user_error(invoke(cli, *command), f"element type {dtype}")
    assert not (tmp_path / "b").exists()


def _conv_pads(tmp_path: Path, pads: list[int]) -> Path:
    model = conv_bn_relu_model()
    conv = model.graph.node[0]
    conv.attribute[0].ints[:] = pads
    path = tmp_path / "pads.onnx"
    onnx.save_model(model, str(path))
    return path


def test_attributes_that_leave_an_output_shape_unknown(cli, tmp_path: Path) -> None:
    for pads, out in (([-7, 1, 1, 1], "b"), ([-1, 1, 1, 1], "c")):  # empty, or not inferable
        path = _conv_pads(tmp_path, pads)
        assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / out, "-q"), "cannot be inferred")
        assert not (tmp_path / out).exists()


def test_a_tvm_lowering_failure_is_an_error(cli, model_path: Path, tmp_path: Path, monkeypatch) -> None:
    from edgec.targets.tvm import build

    def refuse(*args, **kwargs):
        raise ValueError("Invalid conv parameters: lead to negative output shape [0, 8].")

    monkeypatch.setattr(build, "optimize_for_cpu", refuse)
    result = invoke(cli, "compile", model_path, "-o", tmp_path / "b", "-q")
    assert_user_error(result, "TVM could not lower the model for x86", "negative output shape")
    assert not (tmp_path / "b").exists()


def test_native_messages_after_the_command_do_not_reach_the_console() -> None:
    # TVM objects a failed conversion leaves behind log when destroyed, at interpreter exit.
    code = (
        "import os, sys\nfrom edgec.console import detach_native_stderr\ndetach_native_stderr()\n"
        "os.write(2, b'native destructor message\\n')\nprint('edgec: error: own line', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr == "edgec: error: own line\n"
