"""Errors that edgec reports to its users.

Every problem the user can fix (bad model, bad option, bad data) is an :class:`EdgecError`; the CLI
prints it as ``edgec: error: <message>`` and exits with its ``exit_code``, without a traceback.
Anything else that escapes is a bug in edgec and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fix:
    """What resolves a refusal, as data: the flag to add and its value (``--freeze-input``,
    ``sr=VALUE``), or, when no flag can help, what to change in the model (``advice``).

    Tools read ``flag``/``value`` (``edgec check --json``); people read ``str(fix)``.
    """

    flag: str = ""
    value: str = ""
    advice: str = ""

    def __str__(self) -> str:
        command = f"{self.flag} {self.value}".strip()
        if command and self.advice:
            return f"{command} ({self.advice})"
        return command or self.advice

    def as_dict(self) -> dict[str, str]:
        return {"flag": self.flag, "value": self.value, "advice": self.advice}


class EdgecError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""

    exit_code: int = 1


class UnsupportedNodeError(EdgecError):
    """A node that a pass or target cannot handle; the message names the node, its op and, when
    one exists, the fix."""

    def __init__(self, node_name: str, op_type: str, reason: str, fix: Fix | None = None) -> None:
        self.node_name = node_name
        self.op_type = op_type
        self.reason = reason
        self.fix = fix
        super().__init__(f"{op_type} '{node_name}': {reason}" + (f"; fix: {fix}" if fix else ""))


class VerificationError(EdgecError):
    """A lossless pass changed the model's outputs beyond the tolerance."""


class NativeCrashError(EdgecError):
    """Native code (onnxruntime, a built artifact) crashed in edgec's worker process; edgec itself
    carries on to report it (see :mod:`edgec.isolation`)."""


class BudgetError(EdgecError):
    """A budget (flash, RAM, accuracy) was missed; the artifact is still written."""

    exit_code = 3


class ToolchainError(EdgecError):
    """A cross compiler, emulator or other external tool is missing or failed."""
