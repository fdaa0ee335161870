"""x86 targets: this host (``x86``) and a portable AVX2 baseline (``x86-64-v3``).

Both build a TVM Relax module into a shared library that the TVM runtime loads; the default CPU
schedule rules of ``edgec.targets.tvm.schedules`` give the kernels their speed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import UnsupportedNodeError
from edgec.ir import EdgeGraph
from edgec.targets.base import Artifact, Lowered, Target
from edgec.targets.registry import register_target

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
class TvmLibraryTarget(Target):
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
        # The host target's schedules use AVX-512 when the CPU has it (schedules.cpu_vector_info).
        if self.mcpu:
            return self.vector_bits
        flags = host_cpu_flags()
        return 512 if "avx512f" in flags else 256 if "avx2" in flags else 128

    def unsupported(self, graph: EdgeGraph) -> list[UnsupportedNodeError]:
        from edgec.targets.tvm.frontend import unsupported

        return unsupported(graph.to_onnx())

    def lower(self, graph: EdgeGraph) -> Lowered:
        from edgec.ir import static_shape
        from edgec.targets.tvm.build import optimize_for_cpu
        from edgec.targets.tvm.integer import lower_onnx

        self.check_float16_compute(graph)
        shapes = {t.name: static_shape(t) for t in graph.inputs}
        # A QDQ graph becomes integer kernels; a float graph goes through the ONNX frontend.
        module = lower_onnx(graph.to_onnx(), shapes, self.requantize_rounding)
        return Lowered(optimize_for_cpu(module, self.tvm_target()), {})

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
    )
)
