"""x86 targets: this host (``x86``) and a portable AVX2 baseline (``x86-64-v3``).

Both lower like every TVM target (:class:`edgec.targets.tvm.target.TvmTarget`) and build a shared
library that the TVM runtime loads; the default CPU schedule rules of ``edgec.targets.tvm.schedules``
give the kernels their speed (``vpdpbusd`` int8 kernels with VNNI, ``vpmaddwd`` with AVX2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgec.errors import EdgecError
from edgec.targets.base import Artifact
from edgec.targets.registry import register_target
from edgec.targets.tvm.target import TvmTarget

if TYPE_CHECKING:
    from edgec.isolation import Worker

LIBRARY = "model.so"


@functools.cache
def host_cpu_name() -> str:
    """LLVM's name for this CPU (``mcpu: native`` is ignored by TVM, see DESIGN.md)."""
    import tvm

    return str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags as Linux reports them (``/proc/cpuinfo``; empty elsewhere).

    Read from the kernel rather than from LLVM so that listing targets does not load TVM.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


@dataclass(frozen=True)
class TvmLibraryTarget(TvmTarget):
    """A Linux target whose artifact is a TVM shared library run by the TVM runtime.

    Attributes:
        mcpu, mattr: the LLVM CPU and features (empty: this host's).
        threads: the threads the library runs with (``edgec compile --threads N``); 0, the
            default, is the physical cores of the machine it runs on. ``TVM_NUM_THREADS`` or
            ``OMP_NUM_THREADS`` in the environment still win (:mod:`edgec.targets.tvm.threads`).
    """

    mcpu: str = ""
    mattr: tuple[str, ...] = ()
    threads: int = 0

    def tvm_target(self) -> dict[str, Any]:
        target: dict[str, Any] = {"kind": "llvm", "mcpu": self.mcpu or host_cpu_name()}
        if self.mattr:
            target["mattr"] = list(self.mattr)
        return target

    def has_fp16_arithmetic(self) -> bool:
        # Only AVX512-FP16 (Sapphire Rapids; not Zen 4/5) computes in half precision; F16C merely
        # converts, so LLVM would run every fp16 op as float32 plus conversions. A named CPU
        # (x86-64-v3 = haswell) declares it in the field; the host target asks the kernel.
        if self.mcpu:
            return self.fp16_arithmetic
        return self.fp16_arithmetic or "avx512_fp16" in host_cpu_flags()

    def simd_bits(self) -> int:
        if self.mcpu:
            return self.vector_bits
        flags = host_cpu_flags()
        return 512 if "avx512f" in flags else 256 if "avx" in flags else 128

    def int8_micro_kernel(self) -> str | None:
        if self.mcpu or not self.micro_kernels:
            return super().int8_micro_kernel()
        flags = host_cpu_flags()
        if flags & {"avx512_vnni", "avx_vnni"}:
            return "vpdpbusd"
        return "vpmaddwd" if "avx2" in flags else None

    def build(self, module, out_dir: Path, name: str) -> Artifact:
        from edgec.targets.tvm.build import build_shared_library

        library = out_dir / LIBRARY
        build_shared_library(module, self.tvm_target(), library, threads=self.threads)
        return Artifact(out_dir, (LIBRARY,), sizes={"library_bytes": library.stat().st_size})

    def prepare_run(self) -> None:
        _artifact_worker()

    def run(
        self, build_dir: Path, manifest: dict[str, Any], inputs: list[np.ndarray], repeat: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        library = Path(build_dir) / LIBRARY
        if not library.is_file():
            raise EdgecError(f"no compiled library at {library}; build the model first")
        count = len(inputs[0]) if inputs else 1
        threads = int(manifest.get("target", {}).get("threads") or 0)
        return _artifact_worker().request(
            ("call", f"{_RUNNER}:run_shared_library", (library, inputs, repeat, threads)),
            f"running {count} sample{'s' if count != 1 else ''}",
            f"the artifact {LIBRARY}",
        )

    def tuning_threads(self) -> int:
        from edgec.targets.tvm.threads import physical_cores

        return self.threads or physical_cores()

    def run_threads(self, manifest: dict[str, Any]) -> int:
        from edgec.targets.tvm.threads import requested_threads

        return requested_threads(int(manifest.get("target", {}).get("threads") or 0))[0]

    def describe(self) -> dict[str, Any]:
        # 0 is recorded as 0: "the physical cores of the machine it runs on".
        return {**super().describe(), "threads": self.threads}


# Loaded by the worker from its file (not as edgec.targets.tvm.library_runner): see its docstring.
_RUNNER = Path(__file__).parent / "tvm" / "library_runner.py"


def _artifact_worker() -> Worker:
    """The worker process that runs x86 artifacts (a crash there cannot take edgec down), started
    in the background if it does not run yet.

    The artifact runs on TVM's runtime library alone (``TVM_USE_RUNTIME_LIB``, as on a device),
    which imports in about half the time of TVM with its compiler, and without ``ml_dtypes``: TVM
    needs it only for bfloat16/float8 tensors, which no edgec artifact takes or returns, and its
    import alone costs the worker 0.4 s of CPU (more than the rest of its startup).
    """
    from edgec.isolation import worker

    artifact = worker("artifact")
    artifact.start(preload=("tvm", str(_RUNNER)), env={"TVM_USE_RUNTIME_LIB": "1"}, without=("ml_dtypes",))
    return artifact


register_target(
    TvmLibraryTarget(
        name="x86",
        description="this x86-64 host: LLVM tuned for its CPU (detected), TVM runtime library",
        runtime="tvm",
        runner="host",
    )
)
register_target(
    TvmLibraryTarget(
        name="x86-64-v3",
        description="portable x86-64 with AVX2/FMA (Haswell and newer), TVM runtime library",
        runtime="tvm",
        runner="host",
        mcpu="haswell",
        vector_bits=256,
        micro_kernel="vpmaddwd",
    )
)
