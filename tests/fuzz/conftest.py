"""Prints the fuzz campaign's counts by command and exit code at the end of the run."""

from __future__ import annotations

import json
from collections import Counter

_COUNTS: Counter[tuple[str, int]] = Counter()


def pytest_runtest_logreport(report) -> None:
    # The referee fixture records its counts at teardown; with xdist the reports reach the controller.
    if report.when == "teardown":
        for key, value in report.user_properties:
            if key == "fuzz_counts":
                for command, code, n in json.loads(value):
                    _COUNTS[(command, code)] += n


def pytest_terminal_summary(terminalreporter) -> None:
    if not _COUNTS:
        return
    terminalreporter.section("fuzz campaign")
    terminalreporter.write_line(f"{'command':<10} {'exit 0':>7} {'exit 1':>7} {'exit 2':>7} {'exit 3':>7}")
    for command in sorted({c for c, _ in _COUNTS}):
        row = " ".join(f"{_COUNTS[(command, code)]:>7}" for code in (0, 1, 2, 3))
        terminalreporter.write_line(f"{command:<10} {row}")
    terminalreporter.write_line(f"{'total':<10} {sum(_COUNTS.values()):>7} cases")
