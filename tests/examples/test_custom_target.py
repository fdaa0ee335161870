"""The target-plugin example: a board target installed from outside the repository is found
through its entry point, listed by ``edgec targets`` and used by ``edgec check``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from onnx import TensorProto, helper, save_model

from tests.helpers import REPO, make_model


def _edgec(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "edgec.cli", *args], capture_output=True, text=True, env=env, check=False
    )


def test_installed_plugin_target_is_listed_and_used(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO / "examples" / "custom_target"),
        ],
        check=True,
        capture_output=True,
    )
    listing = json.loads(_edgec(["targets", "--json"], site).stdout)["targets"]
    board = next(t for t in listing if t["name"] == "stm32f446")
    assert board["plugin"] == "edgec-board-stm32f446"
    assert (board["flash_bytes"], board["ram_bytes"]) == (512 * 1024, 128 * 1024)
    assert all(t["plugin"] is None for t in listing if t["name"] != "stm32f446")
    # Without the plugin on the path, the target does not exist.
    missing = _edgec(["check", "model.onnx", "--target", "stm32f446"], tmp_path / "empty")
    assert missing.returncode == 1 and "unknown target 'stm32f446'" in missing.stderr

    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r1")],
        {"x": (TensorProto.FLOAT, [2, 3])},
        {"y": (TensorProto.FLOAT, [2, 3])},
    )
    save_model(model, str(tmp_path / "relu.onnx"))
    checked = _edgec(["check", str(tmp_path / "relu.onnx"), "--target", "stm32f446", "--json"], site)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["target"] == "stm32f446"
