"""Arm targets with runtime-free C: Cortex-A (AArch64 Linux) and Cortex-M (bare metal).

Each target lowers through TVM like x86 (:class:`edgec.targets.tvm.target.TvmTarget`), then builds with the
runtime-free emitter (:mod:`edgec.targets.tvm.c_emitter`): LLVM kernels for the core, a C entry
point with static tables, const weights, a one-arena memory plan, and ``lib<name>.a`` from the
GNU cross toolchain (plus ``lib<name>.so`` on Linux). ``run`` builds a test harness around the
library and executes it under ``qemu-aarch64-static`` or ``qemu-system-arm`` (MPS2 boards,
semihosting), always with a time limit (:mod:`edgec.targets.runners`).

Board budgets: ``cortex-m4`` is an STM32F407VG (1 MiB flash; of its 192 KiB RAM only the 128 KiB
main SRAM is one contiguous, DMA-capable block, so that is the RAM budget; the 64 KiB CCM is left
to the application). ``cortex-m3``: STM32F103RE (512 KiB flash, 64 KiB RAM). ``cortex-m7``:
STM32F746NG (1 MiB flash, 320 KiB RAM). ``cortex-m55``: 2 MiB flash / 1 MiB SRAM, a round budget
for the Alif Ensemble class of parts (not one exact board). Cortex-A (Linux boards) and ``c``
(this host) have no budgets; ``--flash-budget`` / ``--ram-budget`` set or override any of them.

``cortex-a53``/``cortex-a72`` are ARMv8.0-A: NEON but no dot-product instructions (their int8
kernels use ``smull`` + ``sadalp``). ``cortex-a55`` and ``cortex-a76`` (ARMv8.2-A) have the
dot-product extension (int8 kernels with ``sdot``); they and ``cortex-m55`` (MVE with floating
point) have native fp16 arithmetic, so graphs that compute in float16
(``quantize{scheme=fp16,compute=float16}``) build for them; other targets refuse such graphs.
Timings under qemu are emulated time (qemu-aarch64: host clock of the emulator; Cortex-M:
semihosting ``clock()``, 10 ms resolution) and say nothing about real silicon.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgec.targets.base import Artifact, Toolchain
from edgec.targets.registry import register_target
from edgec.targets.runners import run_harness
from edgec.targets.toolchains import (
    CrossToolchain,
    frame_sizes,
    link_probe,
    prologue_frames,
    read_stack_usage,
    section_sizes,
    stack_estimate,
)
from edgec.targets.tvm.target import TvmTarget

KIB = 1024
MIB = 1024 * KIB
# Code sections that end up in flash (rodata is inside .text in the MPS2 linker script).
_FLASH_SECTIONS = (".vectors", ".weights", ".text", ".rodata", ".ARM.exidx", ".ARM.extab", ".data")


@dataclass(frozen=True)
class RuntimeFreeTarget(TvmTarget):
    """A target whose artifact is runtime-free C (``runtime="none"``) built by a GNU cross gcc.

    Attributes:
        mtriple, mcpu, mattr, float_abi: The LLVM target of the kernels. The triple is LLVM's
            normalized four-part form (``thumbv7em-unknown-none-eabihf``): TVM hands it to LLVM
            as written, and LLVM reads ``thumbv7em-none-eabihf`` without its EABI environment,
            so it calls libgcc's generic helpers (``__fixsfdi``) with the hard-float convention
            where arm-none-eabi's libgcc implements them as the soft-float ``__aeabi_f2lz``.
        cflags: gcc flags for the same core (must agree with the LLVM target's float ABI).
        machine, qemu_cpu: qemu-system-arm board and CPU (Cortex-M only).
        linker_script: The board's linker script in ``runtime/cortex_m`` (Cortex-M only).
    """

    mtriple: str = ""
    mcpu: str = ""
    mattr: tuple[str, ...] = ()
    float_abi: str = ""
    cflags: tuple[str, ...] = ()
    machine: str = ""
    qemu_cpu: str = ""
    linker_script: str = "mps2.ld"

    # -- what the target is --------------------------------------------------------------------
    def tvm_target(self) -> dict[str, Any]:
        if not self.mtriple:
            return {"kind": "c"}  # portable C from TVM's C code generator
        target: dict[str, Any] = {"kind": "llvm", "mtriple": self.mtriple, "mcpu": self.mcpu}
        if self.mattr:
            target["mattr"] = list(self.mattr)
        if self.float_abi:
            target["mfloat-abi"] = self.float_abi
        return target

    def cross(self) -> CrossToolchain:
        assert self.toolchain is not None
        return CrossToolchain(
            self.toolchain.cc.removesuffix("gcc"),
            self.toolchain.debian_package,
            self.cflags,
        )

    def rpc_compiler(self) -> str | None:
        # AArch64 Linux boards run TVM's runtime, which loads kernels from a shared library; bare
        # metal and portable C have no runtime to measure a candidate with.
        return self.cross().tool("gcc") if self.runner == "qemu-aarch64" else None

    @property
    def bare_metal(self) -> bool:
        return self.runner == "qemu-system-arm"

    # -- build, run ---------------------------------------------------------------------------
    def build(self, module, out_dir: Path, name: str) -> Artifact:
        from edgec.targets.tvm import arena as arena_plan
        from edgec.targets.tvm import c_emitter, relax_program

        out_dir = Path(out_dir)
        cross = self.cross()
        cross.tool("gcc")  # fail early, naming the package, before TVM spends time compiling
        build_target = self.tvm_target()
        lowered = relax_program.lower_to_calls(module, build_target)
        program = relax_program.read_program(lowered, relax_program.kernel_memory(lowered, build_target))
        concatenations = arena_plan.alias_concatenations(program)
        arena = arena_plan.plan_arena(program)
        stock = relax_program.stock_plan_bytes(lowered)
        lowered = arena_plan.without_noalias(lowered, program, arena)
        kernels = c_emitter.build_kernels(
            lowered, program, build_target, f"{name}_", out_dir / f"{name}_kernels"
        )
        files = [kernels.name, *c_emitter.emit_sources(program, arena, name, out_dir)]
        with tempfile.TemporaryDirectory(prefix="edgec-build-") as scratch_name:
            scratch = Path(scratch_name)
            pic = () if self.bare_metal else ("-fPIC",)
            objects = [kernels] if kernels.suffix == ".o" else []
            stack_usage: dict[str, int] = {}
            sources = [f"{name}.c", f"{name}_params.c", "edgec_shim.c"]
            if kernels.suffix == ".c":
                sources.insert(0, kernels.name)
            for source in sources:
                obj = scratch / (Path(source).stem + ".o")
                # -fstack-usage: gcc's own frame sizes for the entry point and the shim.
                # TVM's generated C declares variables it never reads: keep its warnings quiet.
                quiet = ("-w",) if source == kernels.name else ()
                cross.compile(out_dir / source, obj, (*pic, *quiet, "-fstack-usage", f"-I{out_dir}"))
                objects.append(obj)
                stack_usage.update(read_stack_usage(obj.with_suffix(".su")))
            library = f"lib{name}.a"
            cross.archive(out_dir / library, objects)
            files.append(library)
            if self.bare_metal:
                support = c_emitter.runtime_dir() / "cortex_m"
                image = link_probe(cross, out_dir, name, scratch, support)
                baseline = link_probe(cross, out_dir, name, scratch, support, empty=True)
            else:
                image = out_dir / f"lib{name}.so"
                cross.link(image, objects, ("-shared", "-Wl,--gc-sections", "-lm"))
                files.append(image.name)
                baseline = None
            size_tool = cross.tool("size")
            sections = section_sizes(size_tool, image)
            flash = sum(v for k, v in sections.items() if k in _FLASH_SECTIONS)
            if baseline is not None:
                base_sections = section_sizes(size_tool, baseline)
                flash -= sum(v for k, v in base_sections.items() if k in _FLASH_SECTIONS)
            frames = {**stack_usage, **frame_sizes(cross, image)}
            prologues = prologue_frames(cross, image) if self.mtriple.startswith("thumb") else {}
        weights = sum(int(np.asarray(c).nbytes) for c in program.constants)
        kernel_arrays = {s.kernel: s.stack_bytes for s in program.steps}
        stack, stack_detail = stack_estimate(frames, name, kernel_arrays, prologues)
        sizes = {
            "flash_bytes": flash,
            "code_bytes": flash - weights,
            "weights_bytes": weights,
            "arena_bytes": arena.plan.arena_bytes,
            "stack_bytes": stack,
            "peak_ram_bytes": arena.plan.arena_bytes + stack,
            "arena_lower_bound_bytes": arena.lower_bound_bytes,
            "arena_naive_bytes": arena.naive_bytes,
            "arena_tvm_stock_plan_bytes": stock,
        }
        details = {
            "runtime": "none (runtime-free C)",
            "library": library,
            "header": f"{name}.h",
            "kernels": len({s.kernel for s in program.steps}),
            "steps": len(program.steps),
            "in_place_steps": len(arena.in_place) + len(concatenations),
            "workspace_bytes": sum(s.workspace_bytes for s in program.steps),
            "image_sections": sections,
            "image": "linked probe firmware (model minus empty baseline)" if self.bare_metal else image.name,
            "stack_estimate": stack_detail,
            "cflags": list(self.cflags),
            "tvm_stock_plan_includes_outputs": True,
            "memory": arena_plan.memory_report(program, arena, concatenations, lowered),
        }
        return Artifact(out_dir, tuple(files), sizes=sizes, details=details)

    def run(
        self, build_dir: Path, manifest: dict[str, Any], inputs: list[np.ndarray], repeat: int = 0
    ) -> tuple[list[np.ndarray], list[float]]:
        return run_harness(self, build_dir, manifest, inputs, repeat)


_AARCH64 = Toolchain("aarch64-linux-gnu-gcc", debian_package="gcc-aarch64-linux-gnu")
_ARM_EABI = Toolchain("arm-none-eabi-gcc", debian_package="gcc-arm-none-eabi")


def _cortex_a(
    core: str, isa: str, mattr: tuple[str, ...], qemu_cpu: str, micro_kernel: str, fp16: bool = False
) -> RuntimeFreeTarget:
    """An AArch64 Linux core: runtime-free C with the GNU cross toolchain, run under qemu-aarch64."""
    return RuntimeFreeTarget(
        name=core,
        description=f"{core.title()} ({isa}): runtime-free C, lib<name>.a/.so, runs under qemu-aarch64",
        runtime="none",
        runner="qemu-aarch64",
        toolchain=_AARCH64,
        fp16_arithmetic=fp16,
        vector_bits=128,
        micro_kernel=micro_kernel,
        mtriple="aarch64-linux-gnu",
        mcpu=core,
        mattr=mattr,
        cflags=(f"-mcpu={core}",),
        qemu_cpu=qemu_cpu,
    )


# int8 kernels: smull + sadalp on ARMv8.0-A, sdot with the dot-product extension (targets/tvm/arm_neon.py).
for _core in ("cortex-a53", "cortex-a72"):
    register_target(
        _cortex_a(_core, "AArch64 Linux, NEON; no dot-product in ARMv8.0", ("+neon",), _core, "sadalp")
    )
# qemu-aarch64 has no cortex-a55 model; its cortex-a76 is the nearest strict one (ARMv8.2-A with
# FEAT_FP16 and dot product, no SVE), where "max" would also accept instructions an A55 lacks.
for _core in ("cortex-a55", "cortex-a76"):
    register_target(
        _cortex_a(
            _core,
            "AArch64 Linux, ARMv8.2-A NEON with dot product and fp16 arithmetic",
            ("+neon", "+fullfp16", "+dotprod"),
            "cortex-a76",
            "sdot",
            fp16=True,
        )
    )

register_target(
    RuntimeFreeTarget(
        name="cortex-m3",
        description="Cortex-M3, soft float (board: STM32F103RE, 512 KiB flash / 64 KiB RAM); "
        "runtime-free C, runs on qemu mps2-an385",
        runtime="none",
        memory_planning=True,
        runner="qemu-system-arm",
        toolchain=_ARM_EABI,
        flash_bytes=512 * KIB,
        ram_bytes=64 * KIB,
        mtriple="thumbv7m-unknown-none-eabi",
        mcpu="cortex-m3",
        float_abi="soft",
        cflags=("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"),
        machine="mps2-an385",
        qemu_cpu="cortex-m3",
    )
)
register_target(
    RuntimeFreeTarget(
        name="cortex-m4",
        description="Cortex-M4F (board: STM32F407VG, 1 MiB flash / 128 KiB contiguous SRAM); "
        "runtime-free C, runs on qemu mps2-an386",
        runtime="none",
        memory_planning=True,
        runner="qemu-system-arm",
        toolchain=_ARM_EABI,
        flash_bytes=1 * MIB,
        ram_bytes=128 * KIB,
        vector_bits=32,  # DSP extension: SIMD within a 32-bit register (two int16 MACs per SMLAD)
        micro_kernel="smlad",
        mtriple="thumbv7em-unknown-none-eabihf",
        mcpu="cortex-m4",
        float_abi="hard",
        cflags=("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
        machine="mps2-an386",
        qemu_cpu="cortex-m4",
    )
)
register_target(
    RuntimeFreeTarget(
        name="cortex-m7",
        description="Cortex-M7 with double-precision FPU (board: STM32F746NG, 1 MiB flash / "
        "320 KiB RAM); runtime-free C, runs on qemu mps2-an500",
        runtime="none",
        memory_planning=True,
        runner="qemu-system-arm",
        toolchain=_ARM_EABI,
        flash_bytes=1 * MIB,
        ram_bytes=320 * KIB,
        vector_bits=32,
        micro_kernel="smlad",
        mtriple="thumbv7em-unknown-none-eabihf",
        mcpu="cortex-m7",
        float_abi="hard",
        cflags=("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
        machine="mps2-an500",
        qemu_cpu="cortex-m7",
        linker_script="mps2_an500.ld",
    )
)
register_target(
    RuntimeFreeTarget(
        name="cortex-m55",
        description="Cortex-M55 with Helium (MVE) and FPU (budget: 2 MiB flash / 1 MiB SRAM, an "
        "Alif Ensemble E3-class part); runtime-free C, runs on qemu mps3-an547",
        runtime="none",
        memory_planning=True,
        runner="qemu-system-arm",
        toolchain=_ARM_EABI,
        flash_bytes=2 * MIB,
        ram_bytes=1 * MIB,
        # mcpu=cortex-m55 gives LLVM +mve.fp and +fullfp16 (checked in tests/targets/test_fp16_compute.py).
        fp16_arithmetic=True,
        vector_bits=128,  # Helium (MVE)
        micro_kernel="vmladava",  # and SMLAD for what it declines (targets/tvm/arm_mve.py)
        mtriple="thumbv8.1m.main-unknown-none-eabihf",
        mcpu="cortex-m55",
        float_abi="hard",
        cflags=("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
        machine="mps3-an547",
        qemu_cpu="cortex-m55",
        linker_script="mps3_an547.ld",
    )
)

register_target(
    RuntimeFreeTarget(
        name="c",
        description="portable C99 kernels (TVM's C code generator) with the runtime-free entry point; "
        "built and run on this host with gcc",
        runtime="none",
        memory_planning=True,
        runner="host",
        toolchain=Toolchain("gcc", debian_package="gcc"),
        cflags=("-std=c99",),
    )
)
