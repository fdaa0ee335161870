"""The plugin example: a pass installed from outside the repository is found through its entry
point, listed by ``edgec passes`` and runs in a pipeline string."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.helpers import REPO, make_model


def _edgec(args: list[str], plugin_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(plugin_dir)}
    return subprocess.run(
        [sys.executable, "-m", "edgec.cli", *args], capture_output=True, text=True, env=env, check=False
    )


def test_installed_plugin_pass_is_discovered_and_runs(tmp_path: Path) -> None:
    plugin_dir = tmp_path / "site"
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
            str(plugin_dir),
            str(REPO / "examples" / "custom_pass"),
        ],
        check=True,
        capture_output=True,
    )
    listing = json.loads(_edgec(["passes", "--json"], plugin_dir).stdout)
    entry = next(p for p in listing["passes"] if p["name"] == "eliminate-double-relu")
    assert entry["plugin"] == "edgec-double-relu" and entry["lossless"]
    # Without the plugin on the path, the pass does not exist.
    assert "eliminate-double-relu" not in _edgec(["passes"], tmp_path / "empty").stdout

    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["h"], name="r1"),
            helper.make_node("Relu", ["h"], ["y"], name="r2"),
        ],
        {"x": (TensorProto.FLOAT, [2, 3])},
        {"y": (TensorProto.FLOAT, [2, 3])},
    )
    onnx.save_model(model, str(tmp_path / "relu.onnx"))
    result = _edgec(
        [
            "optimize",
            str(tmp_path / "relu.onnx"),
            "-o",
            str(tmp_path / "out.onnx"),
            "--no-simplify",
            "-p",
            "eliminate-double-relu",
            "--verify-each",
            "--json",
        ],
        plugin_dir,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passes"][0]["stats"] == {"removed": 1}
    optimized = onnx.load(str(tmp_path / "out.onnx"))
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]
    assert [o.name for o in optimized.graph.output] == ["y"]
    from edgec.verify import run_onnx

    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(run_onnx(optimized, {"x": x})["y"], np.maximum(x, 0))
