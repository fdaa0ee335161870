"""The base of every TVM target: what it runs natively, its legalization, and the one ``lower``.

x86 (a TVM runtime library) and Cortex-A/M/``c`` (runtime-free C) differ in how they build and
run an artifact, not in how they lower: both translate the legal graph (:mod:`.translate`),
optimize it for a CPU (:func:`.build.optimize_for_cpu`) and report per node what they built
(:mod:`.report`). What they run natively is declared here once (:meth:`TvmTarget.capabilities`)
and read by the passes, the legalization and the report.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The legalization passes these targets name register on import: a target is usable whatever the
# state of the installed entry points (which list them for `edgec passes`).
import edgec.targets.legalize  # noqa: F401
from edgec.capabilities import Capabilities
from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.ir import EdgeGraph
from edgec.targets.base import Lowered, Target
from edgec.targets.integer.kernels import INTEGER_KERNELS
from edgec.targets.tvm.tuning_database import TuningDatabase, TuningKey

if TYPE_CHECKING:
    from edgec.targets.tvm.tuning import TuneReport
    from edgec.tune import RpcBoards

__all__ = ["PACKED_WEIGHT_BITS", "REDUCTION_STEP", "SPARSE_FORMATS", "TvmTarget", "legalization"]

# Weight widths kept at their width in the artifact and decoded in the kernels (16: float16).
PACKED_WEIGHT_BITS = frozenset({1, 2, 4, 8, 16})
# Sparse weight formats the conv/matmul kernels read compressed (edgec.targets.tvm.sparse_layout).
SPARSE_FORMATS = frozenset({"bitmap", "nm"})


# Input channels each instruction of an int8 micro-kernel reduces (the rules' ``group`` in
# targets/tvm/arm_neon.py; tests/targets/test_pad_channels.py checks it), for ``pad-channels``.
# Measured on Cortex-A (squeezenet's first conv was 22% of the cortex-a55 int8 instructions); the
# x86 kernels (vpmaddwd 2, vpdpbusd 4) are not listed until measured there, so x86 first layers
# keep the plain schedule.
REDUCTION_STEP = {"sdot": 4, "sadalp": 2}


def legalization(
    rounding: str,
    memory_planning: bool = False,
    ram_budget: int | None = None,
    streaming: str = "none",
    channel_multiple: int = 0,
) -> str:
    """The pipeline that makes a graph lowerable by the TVM targets: n-ary Sum as Add (the
    frontend's Sum breaks NHWC), inference Dropout/Identity removed (relax's dropout returns a tuple
    that layout conversion rejects), QDQ groups as integer nodes, narrow weights packed; with
    ``memory_planning``, integer convolutions and the pools that read them fused and the first
    stages planned in row bands under ``ram_budget`` (``plan-memory``, told which convolutions the
    target's schedules write row by row: ``streaming``). Weights with zeros are stored sparse before
    the memory passes: a pruned model keeps the flash its pruning saved, and a conv reading a sparse
    weight is neither fused with its pool nor streamed in place (its kernel walks output channels),
    which the passes record with the reason. With ``channel_multiple``, integer convolutions get
    their input channels padded to a multiple of it (``pad-channels``: the micro-kernel's step)."""
    pipeline = f"split-sum,eliminate-identity,group-qdq{{rounding={rounding}}},pack-weights,sparse-weights"
    if channel_multiple > 1:
        # After sparse-weights: a padded weight's zeros must not make it sparse (a sparse weight
        # keeps its own kernel, and pad-channels leaves it alone).
        pipeline += f",pad-channels{{multiple={channel_multiple}}}"
    if not memory_planning:
        return pipeline
    return pipeline + f",fuse-conv-pool,plan-memory{{budget={ram_budget or 0},streaming={streaming}}}"


@dataclass(frozen=True)
class TvmTarget(Target):
    """A target lowered through TVM Relax with edgec's integer kernels and packed weights.

    Attributes:
        vector_bits: the SIMD register width its kernels use (0: scalar).
        micro_kernel: the int8 dot-product instruction of its integer conv/matmul kernels
            (``vpdpbusd`` on x86 VNNI, ``vpmaddwd`` on x86 AVX2, ``sdot`` on Cortex-A55/A76, ``sadalp`` on
            Cortex-A53/A72, ``smlad`` on Cortex-M4/M7),
            ``None`` for plain code.
        tuning_database: a tuning database root (``--db``): ``lower`` applies its best records
            for this target, CPU and thread count (:meth:`tuning_key`) before the default rules.
        memory_planning: RAM is the budget that decides (microcontrollers; portable C): the
            legalization fuses convolutions with their pools, and the lowering keeps padded
            inputs and pre-pool tensors out of memory (``edgec compile --no-memory-planning``
            switches it off, for comparisons).
    """

    vector_bits: int = 0
    micro_kernel: str | None = None
    tuning_database: str = ""
    memory_planning: bool = False

    def simd_bits(self) -> int:
        """The SIMD width of this target's CPU (subclasses may detect the host's)."""
        return self.vector_bits

    def int8_micro_kernel(self) -> str | None:
        """The int8 dot-product instruction its kernels use; ``None`` when it has none or the
        micro-kernels are switched off."""
        return self.micro_kernel if self.micro_kernels else None

    def capabilities(self) -> Capabilities:
        return Capabilities(
            target=self.name,
            integer_kernels=INTEGER_KERNELS,
            packed_weight_bits=PACKED_WEIGHT_BITS,
            fp16_arithmetic=self.has_fp16_arithmetic(),
            vector_bits=self.simd_bits(),
            int8_micro_kernel=self.int8_micro_kernel(),
            sparse_formats=SPARSE_FORMATS if self.sparse_weights else frozenset(),
            requantize_rounding=self.requantize_rounding,
            legalization=legalization(
                self.requantize_rounding,
                self.memory_planning,
                self.ram_bytes,
                self.row_streaming(),
                self.channel_multiple(),
            ),
        )

    def channel_multiple(self) -> int:
        """The input-channel multiple ``pad-channels`` pads integer convolutions to: the reduction
        step of the target's int8 micro-kernel; 0 (no padding) without one, or where RAM is the
        budget (a padded input costs its extra channels in the arena)."""
        if self.memory_planning:
            return 0
        return REDUCTION_STEP.get(self.int8_micro_kernel() or "", 0)

    def row_streaming(self) -> str:
        """Which convolutions this target's schedules write row by row, in place over their input
        (``memory_model.STREAMING``): none in portable C (its kernels are TVM's plain loops), the
        depthwise ones elsewhere, every one the SMLAD (and Helium) kernels take with them."""
        if self.tvm_target().get("kind") == "c":
            return "none"
        return "all" if self.int8_micro_kernel() in ("smlad", "vmladava") else "depthwise"

    def describe(self) -> dict:
        return {**super().describe(), "memory_planning": self.memory_planning}

    def unsupported(self, graph: EdgeGraph) -> list[UnsupportedNodeError]:
        from edgec.targets.tvm.frontend import unsupported

        return unsupported(graph.to_onnx())

    def tuning_threads(self) -> int:
        """The threads its kernels run with (runtime-free C: one)."""
        return 1

    def tuning_key(self) -> TuningKey:
        """What this target's tuning records are valid for: its name, CPU and threads."""
        return TuningKey(self.name, str(self.tvm_target().get("mcpu") or "generic"), self.tuning_threads())

    def rpc_compiler(self) -> str | None:
        """The cross gcc that links kernels into a shared library a board's TVM runtime loads
        (``edgec tune --rpc``); ``None`` for a target that cannot be measured over TVM RPC."""
        return None

    def tune(
        self,
        graph: EdgeGraph,
        trials: int,
        seed: int = 0,
        progress: Any = None,
        remote: RpcBoards | None = None,
    ) -> TuneReport:
        """Tunes the kernels of a legal graph into ``tuning_database`` (MetaSchedule; measured on
        this machine, or with ``remote`` on boards registered with a TVM tracker;
        :mod:`edgec.targets.tvm.tuning`, :mod:`edgec.targets.tvm.rpc_tuning`).

        Raises:
            EdgecError: no database, a target whose code this machine cannot run (without
                ``remote``) or that has no TVM runtime to measure on (with it), or boards that
                cannot be reached.
        """
        from edgec.targets.tvm.build import tuning_module
        from edgec.targets.tvm.rpc_tuning import RemoteBoards
        from edgec.targets.tvm.translate import translate
        from edgec.targets.tvm.tuning import tune_module, worker_initializer

        if not self.tuning_database:
            raise EdgecError("tuning needs a database folder: add --db DIR")
        compiler = self.rpc_compiler() if remote is not None else None
        if remote is not None and compiler is None:
            raise EdgecError(
                f"target '{self.name}' cannot be measured over TVM RPC: --rpc tunes on AArch64 Linux "
                "boards (cortex-a53, cortex-a55, cortex-a72), whose TVM runtime loads the candidates"
            )
        if remote is None and (self.runner != "host" or self.tvm_target().get("kind") != "llvm"):
            raise EdgecError(
                f"target '{self.name}' runs under {self.runner}; tuning measures kernels on this "
                "machine (x86), or on boards registered with a TVM tracker (Cortex-A): add --rpc HOST:PORT"
            )
        boards = RemoteBoards(remote.host, remote.port, remote.key) if remote is not None else None
        # Before anything is built or written: the boards answer and can measure.
        count = boards.check() if boards is not None else 0
        module = tuning_module(translate(graph), self.tvm_target(), self.micro_kernels, self.memory_planning)
        database = TuningDatabase(Path(self.tuning_database), self.tuning_key())
        warn = progress.warn if progress is not None else None
        bar = progress.bar if progress is not None else None
        with tempfile.TemporaryDirectory(prefix="edgec-candidates-") as candidates:
            builder = runner = None
            if boards is not None:
                initializer = functools.partial(worker_initializer, self.tuning_threads())
                builder, runner = boards.builder_and_runner(compiler, candidates, count, initializer)
            report = tune_module(
                module,
                self.tvm_target(),
                database,
                trials,
                threads=self.tuning_threads(),
                seed=seed,
                progress=bar,
                waiting=warn,
                builder=builder,
                runner=runner,
            )
        if boards is not None:
            report.measured_on = boards.describe()
        return report

    def lower(self, graph: EdgeGraph) -> Lowered:
        from edgec.targets.tvm.build import micro_kernels_built, optimize_for_cpu
        from edgec.targets.tvm.frontend import FRONTEND_ERRORS
        from edgec.targets.tvm.report import built_nodes
        from edgec.targets.tvm.translate import translate

        self.check_float16_compute(graph)
        relax_module = translate(graph)
        database = (
            TuningDatabase(Path(self.tuning_database), self.tuning_key()) if self.tuning_database else None
        )
        try:
            with database.reading() if database else contextlib.nullcontext() as records:
                module = optimize_for_cpu(
                    relax_module, self.tvm_target(), self.micro_kernels, self.memory_planning, records
                )
        except FRONTEND_ERRORS as err:
            # TOPI checks attributes the ONNX checker leaves alone (a conv whose pads make its
            # output empty): the model is invalid, or edgec has a bug; either way, say what failed.
            detail = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            raise EdgecError(
                f"TVM could not lower the model for {self.name}: {type(err).__name__}: {detail} "
                "(check the model's attributes: pads, strides, axes; if the model is valid, this is "
                "a bug in edgec)"
            ) from err
        tuned = (
            int(module.attrs["edgec.tuned_kernels"]) if "edgec.tuned_kernels" in (module.attrs or {}) else 0
        )
        details: dict = {"micro_kernels": micro_kernels_built(module)}
        if database is not None:
            details["tuning"] = {**asdict(self.tuning_key()), "kernels_from_database": tuned}
        return Lowered(module, built_nodes(graph, self.capabilities()), details)
