"""Tuning over TVM RPC (targets/tvm/rpc_tuning.py, targets/rpc_server.py, targets/board_runtime.py,
runtime/rpc/edgec_rpc_server.c; edgec tune/compile --rpc, edgec rpc-server).

A local TVM tracker and two qemu-backed ``edgec rpc-server`` processes on 127.0.0.1 stand in for
two Cortex-A53 boards: the candidates are built here with the aarch64 cross gcc and timed under
qemu-aarch64 by TVM's aarch64 runtime (emulated time: correctness, not speed).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

import edgec
from edgec.cli import main
from edgec.errors import EdgecError
from edgec.targets.tvm.tuning_database import RECORDS, read_lines
from tests.conftest import conv_bn_relu_model
from tests.targets.cortex_helpers import FP32_ATOL, needs_tools

pytest.importorskip("tornado")  # TVM's tracker

BOARD = "cortex-a53"
# What an emulated board's server prints once the tracker lists it (edgec rpc-server).
READY = "serving cortex-a53"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tracker():
    from tvm.rpc.tracker import Tracker

    port = _free_port()
    running = Tracker("127.0.0.1", port=port, port_end=port + 1, silent=True)
    yield f"127.0.0.1:{running.port}"
    running.terminate()


def _start_board(tracker: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from edgec.cli import main; main()", "rpc-server"]
    with log.open("w") as stderr:
        server = subprocess.Popen([*command, "--tracker", tracker, "--target", BOARD], stderr=stderr)
    deadline = time.monotonic() + 60
    while READY not in log.read_text() and time.monotonic() < deadline and server.poll() is None:
        time.sleep(0.2)
    assert READY in log.read_text(), f"the board's server did not start: {log.read_text()}"
    return server


@pytest.fixture(scope="module")
def boards(tracker, tmp_path_factory):
    """Two emulated Cortex-A53 boards under the key ``cortex-a53``: the tracker and their logs."""
    folder = tmp_path_factory.mktemp("boards")
    logs = [folder / "board1.log", folder / "board2.log"]
    servers = [_start_board(tracker, log) for log in logs]
    yield tracker, logs
    for server in servers:
        server.terminate()
        server.wait(timeout=30)


@needs_tools("qemu-aarch64-static", "aarch64-linux-gnu-gcc")
@pytest.mark.slow
def test_rpc_tuning_measures_on_both_boards_and_the_build_uses_it(tmp_path, cli, boards) -> None:
    tracker, logs = boards
    model = tmp_path / "m.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    db = tmp_path / "db"
    start = time.perf_counter()
    result = cli.invoke(
        main,
        ["tune", str(model), "-t", BOARD, "--trials", "8", "--db", str(db), "--rpc", tracker, "--json"],
    )
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["measured_on"] == f"boards '{BOARD}' at tracker {tracker}"
    # Keyed by the target: what edgec compile --target cortex-a53 --db reads.
    assert Path(report["database"]).name == "cortex-a53--cortex-a53--1t"
    records = [json.loads(line) for line in read_lines(Path(report["database"]) / RECORDS)]
    latencies = [float(s) for record in records for s in record[1][1]]
    assert len(records) >= report["kernels"] >= 2
    # Measured on the boards: aarch64 code timed under qemu (finite, not MetaSchedule's 1e10 failures).
    assert all(math.isfinite(s) and 0 < s < 1 for s in latencies), latencies
    assert all(record[1][2]["mtriple"] == "aarch64-linux-gnu" for record in records)
    # The two boards shared the measurements: each served sessions.
    assert all("session from 127.0.0.1" in log.read_text() for log in logs), [log.read_text() for log in logs]
    print(
        f"rpc tuning: {seconds:.0f} s, {len(records)} records, {min(latencies) * 1e6:.1f}-"
        f"{max(latencies) * 1e6:.1f} us"
    )

    # The tuned schedules build the Cortex-A artifact, which matches onnxruntime under qemu.
    compiled = edgec.compile(model, tmp_path / "build", target=BOARD, db=db)
    assert compiled.manifest["tuning"]["kernels_from_database"] == report["kernels"]
    assert compiled.manifest["error"]["artifact_vs_original"]["max_abs"] < FP32_ATOL


def _sessions_on_both_boards(tracker: str) -> list:
    """One RPC session on each of the two boards, held by this client."""
    from tvm import rpc

    host, port = tracker.rsplit(":", 1)
    return [rpc.connect_tracker(host, int(port)).request(BOARD, session_timeout=60) for _ in range(2)]


@needs_tools("qemu-aarch64-static", "aarch64-linux-gnu-gcc")
@pytest.mark.slow
def test_a_board_keeps_uploaded_files_in_its_session_folder(boards) -> None:
    from tvm.error import RPCError

    tracker, _ = boards
    sessions = _sessions_on_both_boards(tracker)
    # The client names files; a path out of the session's folder is refused by the board side.
    with pytest.raises(RPCError, match="file names only"):
        sessions[0].upload(bytearray(b"x"), target="../escape")
    sessions[1].upload(bytearray(b"data"), target="kept.bin")
    assert bytes(sessions[1].download("kept.bin")) == b"data"
    del sessions


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save_model(conv_bn_relu_model(), str(path))
    return path


def _tune(cli, model: Path, *args: str):
    db = model.parent / "db"
    return cli.invoke(main, ["tune", str(model), "--trials", "2", "--db", str(db), *args]), db


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", BOARD, "--rpc", "localhost"], "--rpc 'localhost' is not HOST:PORT"),
        (["-t", BOARD, "--rpc-key", "a53"], "--rpc-key names boards at a TVM tracker: add --rpc HOST:PORT"),
        (["-t", "cortex-m4", "--rpc", "127.0.0.1:9"], "target 'cortex-m4' cannot be measured over TVM RPC"),
        (
            ["-t", "x86", "--rpc", "127.0.0.1:9"],
            "target 'x86' cannot be measured over TVM RPC: --rpc tunes on AArch64",
        ),
        (
            ["-t", BOARD],
            "runs under qemu-aarch64; tuning measures kernels on this machine (x86), or on boards",
        ),
    ],
)
def test_what_cannot_be_tuned_remotely_is_refused_before_any_work(cli, model, args, message) -> None:
    result, db = _tune(cli, model, *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not db.exists()


def test_compile_with_rpc_needs_tune_and_a_target_with_a_runtime(tmp_path, model) -> None:
    with pytest.raises(EdgecError, match="--rpc measures tuning trials on boards: add --tune N"):
        edgec.compile(model, tmp_path / "out", target=BOARD, db=tmp_path / "db", rpc="127.0.0.1:9")
    with pytest.raises(EdgecError, match="target 'cortex-m4' cannot be measured over TVM RPC"):
        edgec.compile(
            model, tmp_path / "out", target="cortex-m4", db=tmp_path / "db", tune=2, rpc="127.0.0.1:9"
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "db").exists()


@needs_tools("aarch64-linux-gnu-gcc")
def test_an_unreachable_tracker_is_a_clean_error_and_nothing_is_written(cli, model) -> None:
    result, db = _tune(cli, model, "-t", BOARD, "--rpc", f"127.0.0.1:{_free_port()}")
    assert result.exit_code == 1, result.output
    assert "edgec: error: cannot reach the TVM RPC tracker at 127.0.0.1:" in result.output
    assert "Traceback" not in result.output and not db.exists()


@needs_tools("aarch64-linux-gnu-gcc")
def test_a_tracker_without_boards_under_the_key_is_a_clean_error(cli, model, tracker) -> None:
    result, db = _tune(cli, model, "-t", BOARD, "--rpc", tracker, "--rpc-key", "no-such-board")
    assert result.exit_code == 1, result.output
    assert f"the tracker at {tracker} holds no board under key 'no-such-board'" in result.output
    assert not db.exists()


@needs_tools("qemu-aarch64-static", "aarch64-linux-gnu-gcc")
@pytest.mark.slow
def test_no_free_board_within_the_timeout_is_a_clean_error(boards) -> None:

    from edgec.targets.tvm.rpc_tuning import RemoteBoards

    tracker, _ = boards
    busy = _sessions_on_both_boards(tracker)  # both boards busy with another client's sessions
    host, port = tracker.rsplit(":", 1)
    with pytest.raises(EdgecError, match=f"no free board under key '{BOARD}' at {tracker} within 3 s"):
        RemoteBoards(host, int(port), BOARD, session_timeout=3).check()
    del busy
