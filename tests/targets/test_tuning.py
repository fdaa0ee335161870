"""Tuning (targets/tvm/tuning.py, tuning_database.py; edgec tune, compile --tune/--db)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import onnx
import pytest

import edgec
from edgec.cli import main
from edgec.errors import EdgecError
from edgec.targets.tvm.tuning_database import RECORDS, TuningDatabase, TuningKey, read_lines
from tests.conftest import conv_bn_relu_model

pytest.importorskip("tvm")

KEY = TuningKey("x86", "znver5", 2)


def test_database_folders_are_keyed_by_target_cpu_and_threads(tmp_path) -> None:
    assert TuningDatabase(tmp_path, KEY).path == tmp_path / "x86--znver5--2t"
    assert TuningKey("x86", "x86-64/v3", 8).folder() == "x86--x86-64_v3--8t"


def test_a_killed_runs_truncated_last_line_is_dropped_and_other_damage_refused(tmp_path) -> None:
    path = tmp_path / RECORDS
    path.write_text('[1, "a"]\n[2, "b"]\n[3, "c')  # killed mid-write
    assert read_lines(path) == ['[1, "a"]', '[2, "b"]']
    path.write_text('[1, "a"]\n[2, "b\n[3, "c"]\n')
    with pytest.raises(EdgecError, match=r"line 2 is not JSON.*delete the folder"):
        read_lines(path)


def test_two_runs_on_one_database_take_turns(tmp_path) -> None:
    pytest.importorskip("tvm.s_tir.meta_schedule")
    database = TuningDatabase(tmp_path, KEY)
    told: list[str] = []
    second_done = threading.Event()

    def second_run() -> None:
        with database.writing(told.append):
            second_done.set()

    with database.writing():
        worker = threading.Thread(target=second_run)
        worker.start()
        time.sleep(0.5)
        assert told and "another run is tuning into" in told[0]
        assert not second_done.is_set()  # still waiting for the lock
    worker.join(timeout=30)
    assert second_done.is_set()
    assert json.loads((database.path / "key.json").read_text()) == {
        "target": "x86",
        "cpu": "znver5",
        "threads": 2,
    }


def test_reading_a_database_without_records_names_the_fix(tmp_path) -> None:
    database = TuningDatabase(tmp_path, KEY)
    with pytest.raises(EdgecError, match="has no records for target 'x86' on CPU 'znver5' with 2 threads"):
        database.reading().__enter__()


def test_tuning_options_are_checked_before_any_work(tmp_path, cli) -> None:
    model = tmp_path / "m.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    with pytest.raises(EdgecError, match="--tune N keeps what it learns in a database: add --db DIR"):
        edgec.compile(model, tmp_path / "out", tune=4)
    result = cli.invoke(
        main, ["tune", str(model), "--trials", "2", "--db", str(tmp_path / "db"), "-t", "cortex-m4"]
    )
    assert result.exit_code == 1
    assert "target 'cortex-m4' runs under qemu-system-arm" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tune_then_compile_with_the_database_resumes_and_rebuilds_identically(tmp_path, cli) -> None:
    model = tmp_path / "m.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    db = tmp_path / "db"
    result = cli.invoke(
        main, ["tune", str(model), "--trials", "8", "--db", str(db), "--json", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kernels"] >= 2 and report["database"].endswith("--1t")
    # The 8 trials are searched candidates; each kernel's measured default comes besides them.
    assert report["trials_run"] >= 8
    folder = Path(report["database"])
    records = read_lines(folder / RECORDS)
    # Every kernel's first record is edgec's default schedule, measured.
    assert all(task["default_us"] is not None for task in report["tasks"] if task["trials"])
    assert all(task["best_us"] <= task["default_us"] for task in report["tasks"] if task["trials"])

    # Resumable: the trials are in the database already, so a second run tunes nothing.
    again = json.loads(
        cli.invoke(
            main, ["tune", str(model), "--trials", "8", "--db", str(db), "--json", "--threads", "1"]
        ).output
    )
    assert again["trials_run"] == 0 and len(read_lines(folder / RECORDS)) == len(records)

    # A killed run's half-written record does not stop the database from being read.
    with (folder / RECORDS).open("a") as handle:
        handle.write('[0, [[["half')
    first = edgec.compile(model, tmp_path / "a", db=db, threads=1)
    second = edgec.compile(model, tmp_path / "b", db=db, threads=1)
    tuning = first.manifest["tuning"]
    assert tuning["kernels_from_database"] >= 2 and tuning["threads"] == 1
    assert first.manifest["error"]["artifact_vs_original"]["max_abs"] < 1e-4
    # No tuning on a compile with a database: the same schedules, the same library.
    assert "tune" not in second.timings
    assert (tmp_path / "a" / "model.so").read_bytes() == (tmp_path / "b" / "model.so").read_bytes()


@pytest.mark.slow
def test_a_newer_default_schedule_is_measured_into_an_old_database_without_counting_as_a_trial(
    tmp_path, cli, monkeypatch
) -> None:
    from edgec.targets.tvm import tuning

    model = tmp_path / "m.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    db = tmp_path / "db"
    args = ["tune", str(model), "--trials", "4", "--db", str(db), "--json", "--threads", "1"]
    # A database filled by an edgec whose rules scheduled none of these kernels.
    with monkeypatch.context() as patch:
        patch.setattr(tuning, "_default_schedule", lambda func, target: None)
        old = json.loads(cli.invoke(main, args).output)
    assert old["trials_run"] >= 4 and all(task["default_us"] is None for task in old["tasks"])
    # Today's defaults are measured into it; the 4 searched trials are done, so nothing more runs.
    new = json.loads(cli.invoke(main, args).output)
    assert new["trials_run"] == 0
    assert any(task["default_us"] is not None for task in new["tasks"])
    assert all(task["best_us"] <= task["default_us"] for task in new["tasks"] if task["default_us"])
