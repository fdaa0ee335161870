"""Native crashes never kill edgec: onnxruntime and x86 artifact runs live in worker processes.

The crash path is exercised with a real signal in a real child process: the kernel stops a worker
that exceeds its CPU-time limit with SIGXCPU (setrlimit(2), ``RLIMIT_CPU``; set from here with
``resource.prlimit``) while it runs a heavy model, exactly as it would stop one that segfaults.
Nothing in edgec knows about the test.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgec.errors import NativeCrashError
from edgec.isolation import worker
from edgec.verify import run_onnx, run_onnx_batch
from tests.helpers import make_model
from tests.test_cli import assert_user_error, invoke

F = TensorProto.FLOAT


def heavy_model(size: int = 512, layers: int = 8) -> onnx.ModelProto:
    """``y = x @ w @ w ...`` (``layers`` MatMuls of two ``size`` x ``size`` matrices): 1 G
    multiply-accumulates per sample at the default size, 4.2 G at 640 x 16."""
    nodes, x = [], "x"
    for index in range(layers):
        nodes.append(helper.make_node("MatMul", [x, "w"], [f"m{index}"], name=f"mm{index}"))
        x = f"m{index}"
    nodes.append(helper.make_node("Relu", [x], ["y"], name="relu"))
    weight = (np.eye(size) * 0.5 + 0.01).astype(np.float32)
    return make_model(nodes, {"x": (F, [size, size])}, {"y": (F, [size, size])}, {"w": weight}, name="heavy")


def limit_cpu(pid: int, seconds: int = 1) -> None:
    """The kernel sends SIGXCPU to process ``pid`` once it has used about ``seconds`` more CPU."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    soft = int(used) + seconds
    resource.prlimit(pid, resource.RLIMIT_CPU, (soft, soft + 60))


@pytest.fixture
def onnxruntime_worker() -> Iterator[int]:
    """A fresh onnxruntime worker (its pid), stopped afterwards so no limit outlives the test."""
    onnxruntime = worker("onnxruntime")
    onnxruntime.stop()
    run_onnx(heavy_model(8, 1), {"x": np.ones((8, 8), np.float32)})  # started, onnxruntime imported
    assert onnxruntime.pid is not None
    yield onnxruntime.pid
    onnxruntime.stop()


def test_a_crash_in_onnxruntime_is_an_error_and_the_worker_restarts(onnxruntime_worker: int) -> None:
    model = heavy_model(640, 16)
    limit_cpu(onnxruntime_worker)
    # 48 samples (200 G multiply-accumulates): past the second of CPU on an AVX-512 host with two
    # threads (50 samples of the 512 x 8 model finished within it).
    with pytest.raises(NativeCrashError) as crash:
        run_onnx_batch(model, {"x": np.ones((48, 640, 640), np.float32)}, "the heavy model")
    assert str(crash.value) == "onnxruntime crashed (signal 24, SIGXCPU) while running the heavy model"
    # The next request gets a new worker, which recreates the session it needs.
    x = np.random.default_rng(0).standard_normal((640, 640)).astype(np.float32)
    got = run_onnx(model, {"x": x})["y"]
    assert worker("onnxruntime").pid not in (None, onnxruntime_worker)
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    expected = np.maximum(x @ np.linalg.matrix_power(weight, 16), 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_a_worker_that_died_while_idle_is_replaced_silently(onnxruntime_worker: int) -> None:
    os.kill(onnxruntime_worker, 9)
    os.waitpid(onnxruntime_worker, 0)
    assert run_onnx(heavy_model(8, 1), {"x": np.ones((8, 8), np.float32)})["y"].shape == (8, 8)


@pytest.mark.slow
def test_compile_reports_an_onnxruntime_crash_and_writes_nothing(
    onnxruntime_worker: int, tmp_path: Path
) -> None:
    """The crash comes while onnxruntime runs the original or the optimized model for the error
    figures (whichever exhausts the CPU budget): exit 1, ``edgec: error:``, no build folder and
    no staging folder left."""
    folder = tmp_path / "models"
    folder.mkdir()
    model = folder / "heavy.onnx"
    onnx.save_model(heavy_model(640, 16), str(model))
    # 24 samples for the error figures: 100 G multiply-accumulates per reference model.
    x = np.random.default_rng(0).standard_normal((24, 640, 640)).astype(np.float32)
    np.savez(folder / "eval.npz", x=x, label=np.zeros(24, np.int64))
    limit_cpu(onnxruntime_worker)
    out = tmp_path / "out"
    args = ["compile", model, "--target", "x86", "--eval", folder / "eval.npz", "-o", out / "build", "-q"]
    result = invoke(CliRunner(), *args)
    assert_user_error(result, "edgec: error: onnxruntime crashed (signal 24, SIGXCPU) while running the ")
    assert not out.exists() or list(out.iterdir()) == []


@pytest.fixture
def artifact_worker() -> Iterator[int]:
    """A fresh artifact worker with TVM imported (its pid), stopped afterwards."""
    from edgec.targets import get_target

    artifact = worker("artifact")
    artifact.stop()
    get_target("x86").prepare_run()
    # Served once the worker has imported what it preloads.
    assert artifact.request(("call", "os:getpid", ()), "reporting its pid") == artifact.pid
    yield artifact.pid
    artifact.stop()


def test_a_crash_of_the_x86_artifact_is_an_error(artifact_worker: int, tmp_path: Path) -> None:
    from edgec.targets import get_target
    from tests.targets.cortex_helpers import build

    model = heavy_model(640, 16)
    _, manifest = build("x86", model, tmp_path / "build", "heavy")
    target = get_target("x86")
    # 48 samples (200 G multiply-accumulates): past the second of CPU also with tiled AVX-512 matmuls.
    x = np.random.default_rng(0).standard_normal((48, 640, 640)).astype(np.float32)
    limit_cpu(artifact_worker)
    with pytest.raises(NativeCrashError) as crash:
        target.run(tmp_path / "build", manifest, [x])
    assert str(crash.value) == "the artifact model.so crashed (signal 24, SIGXCPU) while running 48 samples"
    (got,), _ = target.run(tmp_path / "build", manifest, [x[:1]])  # a new worker runs it
    np.testing.assert_allclose(
        got[0], run_onnx(model, {"x": x[0]})["y"], rtol=1e-3, atol=1e-3 * np.abs(got).max()
    )


def test_a_killed_build_leaves_no_output_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    """``edgec compile`` in a real process, SIGKILLed while it builds into its staging folder: no
    build folder appears, and the next compile of the same output removes the stale folder."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import DIGITS

    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "edgec.cli",
        "compile",
        str(DIGITS / "digits_cnn.onnx"),
        "-o",
        str(out / "build"),
    ]
    process = subprocess.Popen([*command, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging: list[Path] = []
    deadline = time.monotonic() + 300
    while not staging and process.poll() is None and time.monotonic() < deadline:
        staging = list(out.glob(f".build.{process.pid}.*")) if out.exists() else []
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the compile ended before it was killed"
    assert len(staging) == 1 and staging[0].is_dir()
    assert not (out / "build").exists()
    result = invoke(CliRunner(), "compile", DIGITS / "digits_cnn.onnx", "-o", out / "build", "-q")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["build"]
