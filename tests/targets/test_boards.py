"""Emulated boards hold what the board holds: linker scripts generated from one table per board,
every Cortex-M target verifies a model near its declared flash under qemu, and a model over the
budget still builds, verifies and exits 3 with the overshoot named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.cli import main
from edgec.targets import all_targets, get_target
from edgec.targets.boards import BOARDS, board_for
from edgec.targets.tvm.c_emitter import runtime_dir
from tests.helpers import make_model
from tests.targets.cortex_helpers import needs_tools

CORTEX_M = sorted(name for name, t in all_targets().items() if getattr(t, "bare_metal", False))


def gemm_model(path: Path, weight_bytes: int, outputs: int = 64) -> Path:
    """One fully connected layer with about ``weight_bytes`` of float32 weights."""
    inputs = max(1, weight_bytes // (4 * outputs))
    rng = np.random.default_rng(0)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
    weights = {
        "w": rng.normal(0, 0.05, (outputs, inputs)).astype(np.float32),
        "b": np.zeros(outputs, np.float32),
    }
    model = make_model(
        [node], {"x": (TensorProto.FLOAT, [1, inputs])}, {"y": (TensorProto.FLOAT, [1, outputs])}, weights
    )
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.script)
def test_linker_scripts_are_generated_from_the_board_table(board) -> None:
    assert (runtime_dir() / "cortex_m" / board.script).read_text() == board.linker_script()


@pytest.mark.parametrize("name", CORTEX_M)
def test_the_emulated_board_holds_the_declared_budget(name: str) -> None:
    target = get_target(name)
    board = board_for(target.machine)
    assert board.script == target.linker_script
    capacity = board.capacity()
    assert capacity["WEIGHTS"] >= target.flash_bytes, capacity
    assert capacity["FLASH"] >= target.flash_bytes // 4, capacity  # code: far less than the weights
    assert capacity["RAM"] >= target.ram_bytes, capacity
    assert target.flash_bytes > 0 and target.ram_bytes > 0


@pytest.mark.slow
@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
@pytest.mark.parametrize("name", CORTEX_M)
def test_a_model_near_the_flash_budget_verifies(cli, tmp_path: Path, name: str) -> None:
    target = get_target(name)
    model = gemm_model(tmp_path / "near.onnx", int(target.flash_bytes * 0.85))
    result = cli.invoke(main, ["compile", str(model), "-o", str(tmp_path / "b"), "-t", name, "-q", "--json"])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.output)
    assert 0.8 * target.flash_bytes < manifest["sizes"]["flash_bytes"] <= target.flash_bytes
    assert manifest["error"]["artifact_vs_original"]["cosine"] > 0.99999


@pytest.mark.slow
@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
def test_over_budget_builds_verifies_and_names_the_overshoot(cli, tmp_path: Path) -> None:
    target = get_target("cortex-m55")
    model = gemm_model(tmp_path / "over.onnx", int(target.flash_bytes * 1.5))
    out = tmp_path / "b"
    result = cli.invoke(main, ["compile", str(model), "-o", str(out), "-t", "cortex-m55", "-q"])
    assert result.exit_code == 3, result.stderr
    assert "flash" in result.stderr and f"budget of {target.flash_bytes} B by" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"]["ok"] is False
    assert manifest["sizes"]["flash_bytes"] > target.flash_bytes
    assert manifest["error"]["artifact_vs_original"]["cosine"] > 0.99999  # it ran under qemu
    assert (out / "libover.a").is_file()


@pytest.mark.slow
@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
def test_weights_beyond_the_emulated_board_are_refused_before_linking(
    cli, model_path: Path, tmp_path: Path, monkeypatch
) -> None:
    from edgec.targets import boards

    real = boards.board_for("mps2-an386")
    tiny = dataclasses.replace(
        real,
        regions=tuple(
            dataclasses.replace(r, length=256) if r.name == real.region("WEIGHTS").name else r
            for r in real.regions
        ),
    )
    monkeypatch.setattr(boards, "board_for", lambda machine: tiny)
    result = cli.invoke(
        main, ["compile", str(model_path), "-o", str(tmp_path / "b"), "-t", "cortex-m4", "-q"]
    )
    assert result.exit_code == 1, result.stderr
    assert "exceed the 256 B that qemu's mps2-an386 board holds" in result.stderr
    assert not (tmp_path / "b").exists()
