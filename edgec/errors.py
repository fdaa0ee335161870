"""Errors that edgec reports to its users.

Every problem the user can fix (bad model, bad option, bad data) is an :class:`EdgecError`; the CLI
prints it as ``edgec: error: <message>`` and exits with its ``exit_code``, without a traceback.
Anything else that escapes is a bug in edgec and keeps its traceback.
"""

from __future__ import annotations


class EdgecError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""

    exit_code: int = 1


class UnsupportedNodeError(EdgecError):
    """A node that a pass or target cannot handle; the message names the node and its op."""

    def __init__(self, node_name: str, op_type: str, reason: str) -> None:
        self.node_name = node_name
        self.op_type = op_type
        self.reason = reason
        super().__init__(f"{op_type} '{node_name}': {reason}")


class VerificationError(EdgecError):
    """A lossless pass changed the model's outputs beyond the tolerance."""


class BudgetError(EdgecError):
    """A budget (flash, RAM, accuracy) was missed; the artifact is still written."""

    exit_code = 3


class ToolchainError(EdgecError):
    """A cross compiler, emulator or other external tool is missing or failed."""
