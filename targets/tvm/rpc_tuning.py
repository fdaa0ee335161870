"""Tuning measured on boards registered with a TVM RPC tracker (``edgec tune --rpc HOST:PORT``).

MetaSchedule builds each candidate on this machine for the board's CPU, links it into a shared
library with the target's cross gcc (:func:`export_with_cross_compiler`), and its RPC runner asks
the tracker for a free board under the key, uploads the library, loads it and times it there
(TVM's ``time_evaluator``). With several boards under one key the runner keeps one session per
board in flight, so they share the measurements. :meth:`RemoteBoards.check` finds out before any
build whether the tracker answers and a board under the key is free and can measure.
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from edgec.errors import EdgecError

__all__ = ["RemoteBoards", "export_with_cross_compiler"]


def export_with_cross_compiler(mod: Any, compiler: str, folder: str) -> str:
    """MetaSchedule's export step for a board: the candidate as a shared library linked by the
    board's ``compiler``, in a fresh folder under ``folder``; returns its path."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="candidate-", dir=folder), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


@dataclass(frozen=True)
class RemoteBoards:
    """The boards a TVM tracker holds under one key.

    Attributes:
        host, port: The tracker's address.
        key: The device key the boards registered with.
        session_timeout: Seconds one measurement session may take (qemu is slow) and the longest
            wait for a free board.
    """

    host: str
    port: int
    key: str
    session_timeout: int = 120

    def describe(self) -> str:
        return f"boards '{self.key}' at tracker {self.host}:{self.port}"

    def config(self) -> Any:
        from tvm.s_tir import meta_schedule as ms

        return ms.runner.RPCConfig(
            tracker_host=self.host,
            tracker_port=self.port,
            tracker_key=self.key,
            session_timeout_sec=self.session_timeout,
        )

    def check(self) -> int:
        """The number of boards under the key, once the tracker answered and one of them gave a
        session that can time kernels.

        Raises:
            EdgecError: The tracker is unreachable, holds no board under the key, no board is free
                within ``session_timeout``, or the board cannot measure.
        """
        try:
            socket.create_connection((self.host, self.port), timeout=10).close()
        except OSError as err:
            raise EdgecError(
                f"cannot reach the TVM RPC tracker at {self.host}:{self.port} ({err.strerror or err}); "
                "check --rpc, or start one with 'python -m tvm.exec.rpc_tracker --host HOST --port PORT'"
            ) from None
        boards = self._count()
        if boards == 0:
            raise EdgecError(
                f"the tracker at {self.host}:{self.port} holds no board under key '{self.key}'; check "
                "--rpc-key, or start a board's server (for an emulated one: edgec rpc-server)"
            )
        self._probe()
        return boards

    def _count(self) -> int:
        from tvm import rpc

        tracker = rpc.connect_tracker(self.host, self.port)
        try:
            servers = tracker.summary()["server_info"]
        finally:
            tracker.close()
        return sum(1 for server in servers if server["key"].split(":")[-1] == self.key)

    def _probe(self) -> None:
        """One session from the tracker within the timeout, with the function the runner fills
        arguments with (a board whose runtime lacks it fails every measurement)."""
        outcome: dict[str, Any] = {}

        def connect() -> None:
            try:
                session = self.config().connect_server()
                outcome["filler"] = session.get_function("tvm.contrib.random.random_fill_for_measure")
            except (RuntimeError, ValueError, OSError) as err:
                outcome["error"] = err

        # The tracker queues a request until a board is free; the wait is bounded here.
        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        thread.join(self.session_timeout)
        if thread.is_alive():
            raise EdgecError(
                f"no free board under key '{self.key}' at {self.host}:{self.port} within "
                f"{self.session_timeout} s; are the boards busy with another run?"
            )
        if "error" in outcome:
            detail = (str(outcome["error"]).strip().splitlines() or ["no detail"])[-1]
            raise EdgecError(f"the board under key '{self.key}' cannot measure kernels: {detail}")

    def builder_and_runner(
        self, compiler: str, folder: str, boards: int, initializer: Any
    ) -> tuple[Any, Any]:
        """MetaSchedule's builder (local, linking with the board's ``compiler`` into ``folder``)
        and RPC runner (one session per board in flight)."""
        from tvm.s_tir import meta_schedule as ms

        export = functools.partial(export_with_cross_compiler, compiler=compiler, folder=folder)
        builder = ms.builder.LocalBuilder(max_workers=1, initializer=initializer, f_export=export)
        runner = ms.runner.RPCRunner(
            rpc_config=self.config(),
            # Emulated boards are slow: a few runs per candidate, no minimum duration.
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0),
            max_workers=boards,
            initializer=initializer,
        )
        return builder, runner
