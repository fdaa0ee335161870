"""A quiet console: what native code and build tools write to the process's stderr is captured.

TVM's C++ logging (``Warning: Set native vector bits ...``), compilers and linkers that inherit
stderr, and Python warnings raised while a command runs would otherwise interleave with edgec's own
lines, even with ``--quiet``. :func:`captured_console` points file descriptor 2 at a scratch file
for the duration of a command (edgec's own messages keep the real stderr) and gives the captured
text back; the CLI shows it with ``--verbose``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

__all__ = ["Captured", "captured_console", "detach_native_stderr"]


class Captured:
    """What a command's native code and warnings wrote; filled in when the capture ends."""

    def __init__(self) -> None:
        self.text = ""

    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False  # a replaced stream (click's test runner, pytest's capture)


@contextlib.contextmanager
def captured_console() -> Iterator[Captured]:
    """Captures stderr output that does not come from edgec's Python code."""
    captured = Captured()
    with contextlib.ExitStack() as stack:
        python_stderr = sys.stderr
        python_stderr.flush()
        saved = os.dup(2)
        stack.callback(os.close, saved)
        sink = stack.enter_context(tempfile.TemporaryFile())
        if _writes_to_fd2(python_stderr):
            # edgec's own lines (progress, errors) keep going to the terminal through a copy of fd 2.
            own = io.TextIOWrapper(
                os.fdopen(os.dup(saved), "wb"),
                encoding=python_stderr.encoding,
                errors="replace",
                line_buffering=True,
            )
            stack.callback(own.close)
            sys.stderr = own
            stack.callback(setattr, sys, "stderr", python_stderr)
        os.dup2(sink.fileno(), 2)
        stack.callback(os.dup2, saved, 2)
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("default")
        try:
            yield captured
        finally:
            sys.stderr.flush()
            sink.flush()
            sink.seek(0)
            native = sink.read().decode(errors="replace")
            shown = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught]
            captured.text = native + "".join(f"{line}\n" for line in shown)


def detach_native_stderr() -> None:
    """For the rest of the process, native writes to file descriptor 2 go to /dev/null while
    ``sys.stderr`` keeps the terminal (through a duplicate of the descriptor).

    TVM objects that a failed conversion leaves behind are destroyed at interpreter exit, after
    the command's capture ended, and their destructors log (``BlockBuilder destroyed with
    remaining blocks!``). Only a real process does this; a replaced ``sys.stderr`` (click's test
    runner) is left alone.
    """
    stream = sys.stderr
    if not _writes_to_fd2(stream):
        return
    stream.flush()
    sys.stderr = io.TextIOWrapper(
        os.fdopen(os.dup(2), "wb"), encoding=stream.encoding, errors="replace", line_buffering=True
    )
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
