"""The target contract: what a compilation target declares and the three things it does.

A target lowers an ``EdgeGraph`` to a TVM Relax module, builds that module into an artifact
(files in a build directory) and runs an artifact on inputs (natively or under an emulator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgec.ir import EdgeGraph

RuntimeKind = Literal["tvm", "none"]


@dataclass(frozen=True)
class Toolchain:
    """A C toolchain: compiler, flags, the size tool, and the Debian package that provides them."""

    cc: str
    flags: tuple[str, ...] = ()
    size_tool: str = "size"
    debian_package: str = ""


@dataclass(frozen=True)
class Artifact:
    """A build directory and what the target put in it (paths relative to ``path``)."""

    path: Path
    files: tuple[str, ...]
    sizes: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """A compilation target; subclasses implement ``lower``, ``build`` and ``run``.

    Attributes:
        name: registry key (``x86``, ``cortex-a53``, ``cortex-m4`` ...).
        description: one line for ``edgec targets``.
        runtime: ``tvm`` (a TVM runtime library) or ``none`` (runtime-free C).
        runner: how artifacts execute: ``host``, ``qemu-aarch64``, ``qemu-system-arm``.
        toolchain: the C toolchain that links artifacts, when one is needed.
        flash_bytes, ram_bytes: the board's budgets, when the target is a known board.
    """

    name: str
    description: str
    runtime: RuntimeKind
    runner: str
    toolchain: Toolchain | None = None
    flash_bytes: int | None = None
    ram_bytes: int | None = None

    kind: ClassVar[str] = "abstract"

    def tvm_target(self) -> dict[str, Any]:
        """The TVM target as a JSON-able dict (``tvm.target.Target(dict)``)."""
        raise NotImplementedError

    def lower(self, graph: EdgeGraph):
        """Lowers the graph to a TVM Relax ``IRModule``."""
        raise NotImplementedError

    def build(self, module, out_dir: Path, name: str) -> Artifact:
        """Builds ``module`` into ``out_dir`` and returns what was written."""
        raise NotImplementedError

    def run(
        self, build_dir: Path, manifest: dict[str, Any], inputs: list[np.ndarray], repeat: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        """Runs a built artifact; returns outputs in order and, if ``repeat``, per-run seconds."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "runtime": self.runtime,
            "runner": self.runner,
            "toolchain": self.toolchain.cc if self.toolchain else None,
            "flash_bytes": self.flash_bytes,
            "ram_bytes": self.ram_bytes,
        }
