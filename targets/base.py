"""The target contract: what a compilation target declares and the things it does.

A target declares its capabilities (what it runs natively, read by passes through
``PassContext.capabilities``) and the legalization pipeline that makes a graph lowerable; it
lowers a legal ``EdgeGraph`` to a TVM Relax module and reports per node what it built, builds that
module into an artifact (files in a build directory), and runs an artifact on inputs (natively or
under an emulator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgec.capabilities import Capabilities
from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.ir import EdgeGraph
from edgec.precision import PRECISIONS, WEIGHT_STORAGE

if TYPE_CHECKING:
    from edgec.pm import PassContext, PipelineRun

RuntimeKind = Literal["tvm", "none"]
# Ops whose arithmetic runs in the dtype of their inputs: one with a float16 input means the graph
# computes in float16 (fp16 *storage* casts its weights back to float32 before these ops).
FLOAT16_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Toolchain:
    """A C toolchain: the compiler driver and the Debian package that provides it."""

    cc: str
    debian_package: str = ""


@dataclass(frozen=True)
class BuiltNode:
    """What the lowering built for one node of the legal graph.

    Attributes:
        op: the node's op type in the model (``Conv``, ``MaxPool`` ...).
        precision: the arithmetic it runs in: ``int8`` (an integer kernel or int8 data
            movement), ``int8-dynamic``, ``float32`` or ``float16``.
        weights: how its constant weights are stored in the artifact, when it has any: ``int8``,
            ``int4``, ``int2``, ``binary``, ``float16``, ``float32``.
        kernel: how it was built (the integer op kind, ``relax frontend`` ...).
        reason: why it runs in float although its op has an integer kernel (from the
            legalization's refusal), empty otherwise.
    """

    op: str
    precision: str
    weights: str = ""
    kernel: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        # The manifest's vocabulary is the one edgec.precision compares decisions with.
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.weights and self.weights not in WEIGHT_STORAGE:
            raise ValueError(f"weights {self.weights!r} is not one of {WEIGHT_STORAGE}")

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


@dataclass(frozen=True)
class Lowered:
    """A lowered graph: the TVM Relax module, per node name what was built, and what else the
    manifest should say about the lowering (``details``, e.g. the tuning records applied)."""

    module: Any
    nodes: dict[str, BuiltNode]
    details: dict[str, Any] = field(default_factory=dict)


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
        requantize_rounding: how integer kernels round when they requantize: ``single`` (one
            rounding of the exact product, CMSIS-NN's ``CMSIS_NN_USE_SINGLE_ROUNDING``) or
            ``double`` (TFLite's ``MultiplyByQuantizedMultiplier``, bit-compatible with TFLite
            Micro's reference kernels); see ``edgec.targets.integer.fixed_point``.
        fp16_arithmetic: the CPU has native half-precision arithmetic (Armv8.2-A FEAT_FP16,
            M-profile MVE with floating point, x86 AVX512-FP16). ``lower`` refuses a graph that
            computes in float16 on a target without it: LLVM would silently emulate every fp16
            operation through float32 conversions, slower and no smaller than float32 compute.
        micro_kernels: use the target's hand-written int8 micro-kernels (x86 ``vpmaddwd``,
            Cortex-M4/M7 ``SMLAD``) where it has them; off, its integer convolutions and matmuls
            are TVM's vectorised loops (``edgec compile --no-micro-kernels``, for comparisons).
        sparse_weights: store weights with zeros in the sparse formats the target declares where
            that is smaller; off, every weight is stored dense (``--no-sparse-weights``).
    """

    name: str
    description: str
    runtime: RuntimeKind
    runner: str
    toolchain: Toolchain | None = None
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    requantize_rounding: Literal["single", "double"] = "single"
    fp16_arithmetic: bool = False
    micro_kernels: bool = True
    sparse_weights: bool = True

    def capabilities(self) -> Capabilities:
        """What this target runs natively (read by passes through ``PassContext.capabilities``)."""
        return Capabilities(
            target=self.name,
            fp16_arithmetic=self.has_fp16_arithmetic(),
            requantize_rounding=self.requantize_rounding,
        )

    def unsupported(self, graph: EdgeGraph) -> list[UnsupportedNodeError]:
        """The nodes of a legal graph that ``lower`` cannot translate, each with its reason."""
        return []

    def legalize(self, graph: EdgeGraph, ctx: PassContext | None = None) -> PipelineRun:
        """Runs ``capabilities().legalization`` on ``graph`` (its passes change it in place: pass
        a copy to keep it) through the pass manager, which records every pass; ``lower`` takes
        the resulting graph."""
        from edgec.pm import PassContext, PassManager

        capabilities = self.capabilities()
        ctx = ctx or PassContext(target=self.name, capabilities=capabilities)
        return PassManager(capabilities.legalization, ctx).run(graph)

    def has_fp16_arithmetic(self) -> bool:
        """Whether the CPU computes natively in float16 (subclasses may detect the host CPU)."""
        return self.fp16_arithmetic

    def check_float16_compute(self, graph: EdgeGraph) -> None:
        """Refuses a graph that computes in float16 when this target has no fp16 arithmetic.

        Raises:
            EdgecError: naming the first float16 compute node and the two ways out.
        """
        nodes = float16_compute_nodes(graph)
        if not nodes or self.has_fp16_arithmetic():
            return
        from edgec.targets.registry import all_targets

        capable = sorted(name for name, t in all_targets().items() if t.has_fp16_arithmetic())
        op, node = nodes[0]
        raise EdgecError(
            f"{op} '{node}' computes in float16 but target '{self.name}' has no fp16 arithmetic "
            "(LLVM would emulate every fp16 operation through float32); use --quantize fp16 for fp16 "
            f"storage with float32 compute, or a target with fp16 arithmetic: {', '.join(capable)}"
        )

    def tvm_target(self) -> dict[str, Any]:
        """The TVM target as a JSON-able dict (``tvm.target.Target(dict)``)."""
        raise NotImplementedError

    def lower(self, graph: EdgeGraph) -> Lowered:
        """Translates a legal graph (after ``capabilities().legalization``) to a TVM Relax
        ``IRModule`` and reports what it built per node."""
        raise NotImplementedError

    def build(self, module, out_dir: Path, name: str) -> Artifact:
        """Builds ``module`` into ``out_dir`` and returns what was written."""
        raise NotImplementedError

    def prepare_run(self) -> None:
        """Starts in the background what ``run`` will need (a worker process), so that its startup
        overlaps the build; nothing by default."""

    def run(
        self, build_dir: Path, manifest: dict[str, Any], inputs: list[np.ndarray], repeat: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        """Runs a built artifact on a batch of samples, loading (or linking and booting) it once.

        Args:
            build_dir: the build directory.
            manifest: its manifest (at least ``inputs``/``outputs`` with names, dtypes, shapes).
            inputs: one array per model input, in order, each with a leading sample axis
                (``[N, *input shape]``).
            repeat: how many timed runs of the first sample, 0 for none.

        Returns:
            One array per output, in order, with the same leading sample axis, and the seconds
            of each timed run.
        """
        raise NotImplementedError

    def run_threads(self, manifest: dict[str, Any]) -> int:
        """The threads an artifact built with ``manifest`` runs with here (runtime-free C: one)."""
        return 1

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "runtime": self.runtime,
            "runner": self.runner,
            "toolchain": self.toolchain.cc if self.toolchain else None,
            "flash_bytes": self.flash_bytes,
            "ram_bytes": self.ram_bytes,
            "requantize_rounding": self.requantize_rounding,
            "fp16_arithmetic": self.has_fp16_arithmetic(),
            "micro_kernels": self.micro_kernels,
            "sparse_weights": self.sparse_weights,
        }


def float16_compute_nodes(graph: EdgeGraph) -> list[tuple[str, str]]:
    """``(op, name)`` of the compute ops with a float16 input (a float16 constant or tensor)."""
    found = []
    for node in graph.nodes:
        if node.op not in FLOAT16_COMPUTE_OPS:
            continue
        # A Constant's dtype is its values' dtype; an unknown Variable dtype is None.
        if any(tensor.dtype == np.float16 for tensor in node.inputs):
            found.append((node.op, node.name))
    return found
