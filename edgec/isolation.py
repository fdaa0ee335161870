"""Work that can crash natively runs in persistent worker processes, so a crash is an error message.

onnxruntime sessions (the reference of every numeric claim) and in-process artifact runs (the x86
TVM library) are native code that edgec does not control: a segfault there used to kill edgec
with a core dump, exit 139 and a half-written staging folder. Here each kind of work has a named
worker process (``onnxruntime``, ``artifact``), spawned on first use (or early, with
:meth:`Worker.start`, so its startup overlaps other work), reused for every later request and
restarted after a crash. A worker that dies while it serves a request becomes a
:class:`~edgec.errors.NativeCrashError` (``onnxruntime crashed (signal 11, SIGSEGV) while ...``),
which the CLI prints as ``edgec: error:`` with exit code 1; the build's staging folder is removed
as for any other error.

The protocol is pickle over the worker's stdin/stdout: a request is a tuple whose first item names
the operation (see :mod:`edgec._worker`), a reply is ``("ok", value)``, ``("missing",)`` (a cached
session the worker no longer holds), ``("error", class name, message)`` (an ``EdgecError`` to
re-raise) or ``("bug", traceback)``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from edgec import errors
from edgec.errors import EdgecError, NativeCrashError

__all__ = ["Worker", "worker"]

_SCRIPT = Path(__file__).with_name("_worker.py")
# Seconds a worker gets to exit on its own (end of input) before it is killed.
_EXIT_GRACE_SECONDS = 2.0


class Worker:
    """One persistent worker process; requests are served one at a time, in order.

    Attributes:
        name: what the worker is for (``onnxruntime``, ``artifact``); it names the process in errors.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._process: subprocess.Popen | None = None
        self._owner = 0  # the pid that spawned the process: a forked child must not share it
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs (``None`` before the first request)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(
        self, preload: tuple[str, ...] = (), env: dict[str, str] | None = None, without: tuple[str, ...] = ()
    ) -> None:
        """Spawns the process unless it runs; it imports ``preload`` modules before serving.

        Args:
            preload: modules (names, or paths of ``.py`` files) to import before the first
                request: the startup overlaps the caller's work in the meantime.
            env: environment variables the process starts with (besides the caller's).
            without: optional dependencies the process must not import (their importers fall
                back as when they are not installed).
        """
        with self._lock:
            self._running(preload, env, without)

    def request(self, message: tuple, activity: str, component: str | None = None) -> Any:
        """Sends ``message`` and returns the worker's answer.

        Args:
            message: the request (operation name first).
            activity: what the request does, for the crash message (``running the original model``).
            component: what crashed, when the process dies (default: the worker's name).

        Raises:
            NativeCrashError: the worker died while serving the request (it is restarted on the
                next one).
            EdgecError: the worker reported a user error.
        """
        with self._lock:
            process = self._running((), None, ())
            try:
                pickle.dump(message, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                process.stdin.flush()
                reply = pickle.load(process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                raise NativeCrashError(self._death(component or self.name, activity)) from None
            except BaseException:
                # Interrupted mid-request (Ctrl-C): the worker's state is unknown, start afresh.
                self._kill()
                raise
        kind = reply[0]
        if kind == "error":
            error_class = getattr(errors, reply[1], EdgecError)
            raise error_class(reply[2])
        if kind == "bug":
            raise RuntimeError(f"the {self.name} worker failed while {activity}:\n{reply[1]}")
        return reply[1] if kind == "ok" else None

    def stop(self, wait: bool = True) -> None:
        """Ends the process: closes its input, where it exits, then (with ``wait``) waits for it and
        kills it if it does not exit in time."""
        with self._lock:
            process, self._process = self._process, None
            if process is None or self._owner != os.getpid():
                return
            with contextlib.suppress(OSError):
                process.stdin.close()
            if not wait:
                return
            try:
                process.wait(_EXIT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _running(
        self, preload: tuple[str, ...], env: dict[str, str] | None, without: tuple[str, ...]
    ) -> subprocess.Popen:
        process = self._process
        if process is not None and self._owner == os.getpid() and process.poll() is None:
            return process
        # Not started, forked from the process that started it, or died while idle (killed by
        # the system between requests): a fresh process, as no request of this one was lost.
        if not sys.executable:
            raise EdgecError("cannot start edgec's worker process: Python does not know its own executable")
        process = subprocess.Popen(
            [sys.executable, str(_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # stderr is shared: onnxruntime's and TVM's own messages reach the user as before.
            env={**os.environ, **env} if env else None,
        )
        hello = {"path": list(sys.path), "preload": list(preload), "without": list(without)}
        pickle.dump(hello, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        process.stdin.flush()
        self._process, self._owner = process, os.getpid()
        return process

    def _death(self, component: str, activity: str) -> str:
        """Reaps the dead process and describes how it ended."""
        process, self._process = self._process, None
        assert process is not None
        try:
            code = process.wait(_EXIT_GRACE_SECONDS)
        except subprocess.TimeoutExpired:  # closed its output but still runs: stop it
            process.kill()
            code = process.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            return f"{component} crashed (signal {-code}, {name}) while {activity}"
        return f"{component} stopped unexpectedly (exit code {code}) while {activity}"

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


_WORKERS: dict[str, Worker] = {}
_WORKERS_LOCK = threading.Lock()


def worker(name: str) -> Worker:
    """The process-wide worker called ``name`` (created on first use, started on first request)."""
    with _WORKERS_LOCK:
        if name not in _WORKERS:
            _WORKERS[name] = Worker(name)
        return _WORKERS[name]


@atexit.register
def _stop_all() -> None:
    # Not waiting: a worker exits as soon as it reads the end of its input, or after the request
    # it serves, and edgec's exit should not wait for that.
    for instance in list(_WORKERS.values()):
        instance.stop(wait=False)
