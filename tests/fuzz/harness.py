"""The fuzz campaign's referee: runs one generated case through the CLI in-process and checks the
contract every input must meet (exit code 0/1/2/3, no traceback, no hang, nothing partial written).

Cases run through click's ``CliRunner`` in the test process: one Python start-up for hundreds of
cases. A per-case time limit (``SIGALRM``) turns a hang into a failure that names the case.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from click.testing import CliRunner

from edgec.cli import main

# The campaign's seed; set EDGEC_FUZZ_SEED to replay another campaign.
SEED = int(os.environ.get("EDGEC_FUZZ_SEED", "20261207"))
# Seconds one case may take before it is called a hang (compiles get more).
CASE_SECONDS = 60
COMPILE_CASE_SECONDS = 180


class CaseTimeout(BaseException):
    """A case exceeded its time limit (BaseException: edgec's handlers must not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: int, case: str) -> Iterator[None]:
    def expire(signum, frame):
        raise CaseTimeout(f"hang: case did not finish within {seconds} s (seed {SEED}): {case}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Referee:
    """Runs cases and counts them by command and exit code."""

    def __init__(self) -> None:
        self.runner = CliRunner()
        self.counts: Counter[tuple[str, int]] = Counter()

    def run(self, args: Sequence[str | Path], *, writes: Sequence[Path] = (), case: str = "") -> int:
        """Runs ``edgec ARGS``; ``writes`` are the paths the command may create (nothing there
        before): they must exist after exit 0 or 3 and be absent, with no staging sibling, after
        exit 1 or 2. Returns the exit code."""
        args = [str(a) for a in args]
        command = args[0]
        label = f"seed {SEED}, case {case!r}, command: edgec {' '.join(args)}"
        for path in writes:
            assert not path.exists(), f"{path} exists before the case ({label})"
        limit = COMPILE_CASE_SECONDS if command == "compile" else CASE_SECONDS
        with time_limit(limit, label):
            result = self.runner.invoke(main, args, catch_exceptions=True)
        code = result.exit_code
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            trace = "".join(traceback.format_exception(result.exception))
            raise AssertionError(f"traceback ({label}):\n{trace}\nstderr:\n{stderr}")
        assert "Traceback" not in result.output + stderr, f"traceback printed ({label}):\n{stderr}"
        assert code in (0, 1, 2, 3), f"exit code {code} ({label}):\n{stderr}"
        if code == 1 and not (command == "check" and "edgec: error" not in stderr):
            # The error line may be followed by the quoted lines of a failed tool.
            errors = [line for line in stderr.splitlines() if line.startswith("edgec: error: ")]
            assert len(errors) == 1, f"exit 1 without one error line ({label}):\n{stderr}"
        if code == 2:
            assert "Error:" in stderr or "edgec: error:" in stderr, f"exit 2 without usage error ({label})"
        for path in writes:
            if code in (0, 3):
                assert path.exists(), f"exit {code} but {path} was not written ({label})"
            else:
                assert not path.exists(), f"exit {code} left {path} behind ({label})"
                siblings = [p.name for p in path.parent.glob(f".{path.name}.*")]
                assert not siblings, f"exit {code} left staging folders {siblings} ({label})"
        self.counts[(command, code)] += 1
        return code
