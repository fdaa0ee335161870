"""Quantization-aware training end to end: `edgec compile --qat` for cortex-m4, run under qemu."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgec.cli import main
from edgec.ir import load
from edgec.precision import planned
from tests.helpers import DIGITS
from tests.targets.cortex_helpers import needs_tools

pytestmark = needs_tools("arm-none-eabi-gcc", "qemu-system-arm")


@pytest.mark.slow
def test_qat_int4_build_runs_with_the_accuracy_the_trainer_reported(tmp_path, cli):
    train = np.load(DIGITS / "digits_train.npz")
    test = np.load(DIGITS / "digits_test.npz")
    np.savez(tmp_path / "train.npz", input=train["input"][:320], label=train["label"][:320])
    np.savez(tmp_path / "eval.npz", input=test["input"][:40], label=test["label"][:40])
    args = ["compile", str(DIGITS / "digits_cnn.onnx"), "--target", "cortex-m4", "--quantize", "weight-int4"]
    args += ["--qat", "--epochs", "1", "--train", str(tmp_path / "train.npz")]
    args += ["--calib", str(DIGITS / "digits_calib.npz"), "--eval", str(tmp_path / "eval.npz")]
    result = cli.invoke(main, [*args, "-o", str(tmp_path / "build"), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert "qat{scheme=weight-int4,epochs=1}" in manifest["pipeline"]
    qat = next(r for r in manifest["passes"] if r["name"] == "qat")
    # Nothing calibrated after training: the only quantize run is the one qat started from.
    assert [r["name"] for r in manifest["passes"]].count("quantize") == 1
    assert next(r for r in manifest["passes"] if r["name"] == "quantize")["parent"] == "qat"
    decisions = planned(load(tmp_path / "build" / "optimized.onnx"))
    assert len(decisions) == 4 and set(decisions.values()) == {"weight-int4"}  # 3 Conv, 1 Gemm
    assert manifest["error"]["accuracy"]["artifact"] == qat["stats"]["training"]["accuracy"]


def test_qat_without_training_data_is_a_one_line_error(tmp_path, cli):
    args = ["compile", str(DIGITS / "digits_cnn.onnx"), "--quantize", "int8", "--qat"]
    result = cli.invoke(main, [*args, "--calib", str(DIGITS / "digits_calib.npz"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert result.output == "edgec: error: --qat trains on data: add --train train.npz\n"
    assert not (tmp_path / "b").exists()
