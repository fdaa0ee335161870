"""x86 targets: this host (``x86``) and a portable AVX2 baseline (``x86-64-v3``).

Both lower like every TVM target (:class:`edgec.targets.tvm.target.TvmTarget`) and build a shared
library that the TVM runtime loads; the default CPU schedule rules of ``edgec.targets.tvm.schedules``
give the kernels their speed (``vpmaddwd`` int8 kernels with AVX2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.targets.base import Artifact
from edgec.targets.registry import register_target
from edgec.targets.tvm.target import TvmTarget

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
    """A Linux target whose artifact is a TVM shared library run by the TVM runtime."""

    mcpu: str = ""
    mattr: tuple[str, ...] = ()

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
        return "vpmaddwd" if "avx2" in host_cpu_flags() else None

    def build(self, module, out_dir: Path, name: str) -> Artifact:
        from edgec.targets.tvm.build import build_shared_library

        library = out_dir / LIBRARY
        build_shared_library(module, self.tvm_target(), library)
        return Artifact(out_dir, (LIBRARY,), sizes={"library_bytes": library.stat().st_size})

    def run(
        self, build_dir: Path, manifest: dict[str, Any], inputs: list[np.ndarray], repeat: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        from edgec.targets.tvm.build import run_shared_library, time_shared_library

        library = build_dir / LIBRARY
        outputs = run_shared_library(library, inputs)
        times = time_shared_library(library, inputs, repeat) if repeat else []
        return outputs, times


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
