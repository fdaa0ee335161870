"""The command line on a Cortex-M target: compile, budgets, and run under the emulator."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgec.cli import main
from edgec.verify import run_onnx
from tests.targets.cortex_helpers import DIGITS_ONNX, FP32_ATOL, needs_tools

pytestmark = needs_tools("arm-none-eabi-gcc", "qemu-system-arm")


def test_compile_then_run_on_cortex_m4(tmp_path):
    runner = CliRunner()
    build = tmp_path / "build"
    result = runner.invoke(
        main, ["compile", str(DIGITS_ONNX), "--target", "cortex-m4", "-o", str(build), "--json"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["error"]["artifact_vs_original"]["max_abs"] <= FP32_ATOL
    assert manifest["sizes"]["flash_bytes"] > manifest["sizes"]["weights_bytes"] > 0
    assert manifest["artifact"]["library"] == "libdigits_cnn.a"

    x = np.random.default_rng(3).random((1, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "x.npz", input=x)
    out = tmp_path / "out.npz"
    result = runner.invoke(main, ["run", str(build), "--inputs", str(tmp_path / "x.npz"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    got = np.load(out)["logits"]
    expected = run_onnx(onnx.load(DIGITS_ONNX), {"input": x})["logits"]
    np.testing.assert_allclose(got, expected, atol=FP32_ATOL, rtol=0)


def test_over_the_ram_budget_exits_3_and_keeps_the_artifact(tmp_path):
    build = tmp_path / "build"
    result = CliRunner().invoke(
        main, ["compile", str(DIGITS_ONNX), "--target", "cortex-m4", "-o", str(build), "--ram-budget", "4096"]
    )
    assert result.exit_code == 3, result.output
    assert "peak RAM" in result.output and "exceeds the budget of 4096 B" in result.output
    assert (build / "libdigits_cnn.a").is_file() and (build / "manifest.json").is_file()


@pytest.mark.slow
def test_a_model_larger_than_the_board_still_runs_in_qemu_and_exits_3(tmp_path):
    """squeezenet (4.9 MB of weights) on an STM32F407-class budget: the emulator holds it (big
    RAM regions), the error is measured, and the budget gate says by how much it is over."""
    from edgec.zoo import light_model

    model = tmp_path / "squeezenet.onnx"
    onnx.save(light_model("squeezenet", logits=True), str(model))
    build = tmp_path / "build"
    result = CliRunner().invoke(main, ["compile", str(model), "--target", "cortex-m4", "-o", str(build)])
    assert result.exit_code == 3, result.output
    assert "flash" in result.output and "exceeds the budget of 1048576 B" in result.output
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["error"]["artifact_vs_original"]["max_abs"] <= FP32_ATOL
