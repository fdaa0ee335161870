"""The persistent tuning database: MetaSchedule's JSON files in a folder per target, CPU and
thread count, safe to share between runs.

MetaSchedule's database lookup ignores the target (a workload's records are found whatever CPU
measured them), so one database folder holds one ``(target, cpu, threads)`` key (:class:`TuningKey`):
``DIR/x86--znver5--2t/`` with ``database_workload.json``, ``database_tuning_record.json`` and
``key.json``. The JSON files are append-only, one record per line, so:

* a run killed mid-write leaves at most one truncated last line, which :func:`read_lines` drops
  (readers never see a half-written record);
* two tuning runs on one folder take turns through an exclusive ``flock`` (:meth:`TuningDatabase.writing`),
  since each numbers the workloads it appends from its own in-memory count;
* readers (``edgec compile --db``) do not wait: they open a repaired snapshot of the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgec.errors import EdgecError

__all__ = ["RECORDS", "WORKLOADS", "TuningDatabase", "TuningKey", "read_lines"]

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
_KEY_FILE = "key.json"
_LOCK_FILE = ".lock"


@dataclass(frozen=True)
class TuningKey:
    """What a tuning record is valid for: the edgec target, the CPU, the threads it ran on."""

    target: str
    cpu: str
    threads: int

    def folder(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{self.target}--{self.cpu}")
        return f"{safe}--{self.threads}t"


def read_lines(path: Path) -> list[str]:
    """The complete JSON lines of an append-only database file (a truncated last line, left by a
    killed run, is dropped; an unreadable line elsewhere is an error)."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    complete = []
    for index, line in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError as err:
            if index == len(lines) - 1:
                break  # the last write of a killed run
            raise EdgecError(
                f"tuning database '{path}' line {index + 1} is not JSON ({err.msg}); delete the folder "
                f"'{path.parent}' to start afresh"
            ) from None
        complete.append(line)
    return complete


class TuningDatabase:
    """One key's folder in a database root (``edgec tune --db ROOT``)."""

    def __init__(self, root: Path, key: TuningKey) -> None:
        self.root = Path(root)
        self.key = key
        self.path = self.root / key.folder()

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise EdgecError(f"tuning database '{self.root}' is not a folder")

    def _repair(self, folder: Path) -> None:
        for name in (WORKLOADS, RECORDS):
            path = folder / name
            lines = read_lines(path)
            text = "".join(f"{line}\n" for line in lines)
            if path.is_file() and path.read_text(errors="replace") != text:
                path.write_text(text)

    def _open(self, folder: Path) -> Any:
        from tvm.s_tir import meta_schedule as ms

        return ms.database.JSONDatabase(
            path_workload=str(folder / WORKLOADS), path_tuning_record=str(folder / RECORDS)
        )

    @contextlib.contextmanager
    def writing(self, waiting: Callable[[str], None] | None = None) -> Iterator[Any]:
        """The database open for appending, under an exclusive lock (another run waits)."""
        self._check_root()
        self.path.mkdir(parents=True, exist_ok=True)
        key_file = self.path / _KEY_FILE
        if not key_file.is_file():
            key_file.write_text(json.dumps(asdict(self.key), indent=2) + "\n")
        with (self.path / _LOCK_FILE).open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting(f"another run is tuning into '{self.path}'; waiting for it to finish")
                fcntl.flock(lock, fcntl.LOCK_EX)
            self._repair(self.path)  # a killed run's last line; the lock makes it safe to rewrite
            try:
                yield self._open(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """A snapshot of the database (complete lines only), without waiting for a tuning run."""
        self._check_root()
        if not (self.path / RECORDS).is_file():
            raise EdgecError(
                f"tuning database '{self.root}' has no records for target '{self.key.target}' on "
                f"CPU '{self.key.cpu}' with {self.key.threads} threads; run edgec tune (or compile "
                "--tune N) with this --db first"
            )
        with tempfile.TemporaryDirectory(prefix="edgec-db-") as scratch:
            snapshot = Path(scratch)
            for name in (WORKLOADS, RECORDS):
                if (self.path / name).is_file():
                    shutil.copyfile(self.path / name, snapshot / name)
            self._repair(snapshot)
            yield self._open(snapshot)
