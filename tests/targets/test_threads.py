"""All cores by default: the thread count of x86 libraries (targets/tvm/threads.py, edgec_threads.c)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec.cli import main
from edgec.errors import EdgecError
from edgec.targets.tvm.threads import physical_cores, requested_threads
from tests.conftest import conv_bn_relu_model

pytest.importorskip("tvm")

_POOL_SIZE = """
import sys, tvm
tvm.runtime.load_module(sys.argv[1])
print(tvm.runtime.num_threads())
"""


def _pool_size_after_loading(library: Path, **env: str) -> int:
    """TVM's pool size in a fresh process that only loads ``library`` (no edgec involved)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", _POOL_SIZE, str(library)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1])


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("threads")
    model = folder / "convnet.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    np.savez(folder / "x.npz", x=np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32))
    edgec.compile(model, folder / "default")
    edgec.compile(model, folder / "one", threads=1)
    return {"default": folder / "default", "one": folder / "one", "inputs": folder / "x.npz"}


def test_physical_cores_counts_cores_this_process_may_use() -> None:
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_environment_wins_then_the_compiled_count_then_physical_cores(monkeypatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert requested_threads(0) == (physical_cores(), "physical cores")
    assert requested_threads(3) == (3, "compiled with --threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert requested_threads(3) == (5, "OMP_NUM_THREADS")
    monkeypatch.setenv("TVM_NUM_THREADS", "7")
    assert requested_threads(3) == (7, "TVM_NUM_THREADS")
    monkeypatch.setenv("TVM_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="TVM_NUM_THREADS='many'"):
        requested_threads(3)


def test_a_library_loaded_by_any_tvm_runtime_starts_with_the_physical_cores(builds) -> None:
    # TVM alone would start half the hardware threads (one on a 2-core machine).
    assert _pool_size_after_loading(builds["default"] / "model.so") == physical_cores()


def test_a_library_compiled_with_threads_starts_with_that_count_unless_the_environment_says(builds) -> None:
    # TVM caps its starting pool at the hardware threads, so the counts stay within them.
    assert _pool_size_after_loading(builds["one"] / "model.so") == 1
    assert _pool_size_after_loading(builds["one"] / "model.so", OMP_NUM_THREADS="2") == min(
        2, len(os.sched_getaffinity(0))
    )


def test_threads_are_recorded_in_the_manifest_and_stated_by_edgec_run(builds, cli, monkeypatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    manifest = json.loads((builds["one"] / "manifest.json").read_text())
    assert manifest["target"]["threads"] == 1
    assert json.loads((builds["default"] / "manifest.json").read_text())["target"]["threads"] == 0
    result = cli.invoke(main, ["run", str(builds["one"]), "--inputs", str(builds["inputs"]), "--repeat", "2"])
    assert result.exit_code == 0, result.output
    assert "on 1 thread:" in result.output
    result = cli.invoke(main, ["run", str(builds["default"]), "--inputs", str(builds["inputs"]), "--json"])
    assert json.loads(result.output)["threads"] == physical_cores()


def test_threads_refused_for_runtime_free_targets_and_bad_environment(
    builds, cli, monkeypatch, tmp_path
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    with pytest.raises(EdgecError, match="runtime-free C"):
        edgec.compile(model, tmp_path / "m4", target="cortex-m4", threads=2)
    assert not (tmp_path / "m4").exists()
    monkeypatch.setenv("TVM_NUM_THREADS", "0")
    result = cli.invoke(main, ["run", str(builds["default"]), "--inputs", str(builds["inputs"])])
    assert result.exit_code == 1
    assert "edgec: error: TVM_NUM_THREADS='0' is not a positive number of threads" in result.output
