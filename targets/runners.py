"""Runners: build the test harness around runtime-free libraries and execute it natively or under
qemu on a batch of samples, always with a time limit.

The harness (``runtime/harness.c``) exchanges data through files in its working directory:
``in<i>.bin`` → ``out<i>.bin`` (the samples one after the other), ``edgec_samples.txt``,
``edgec_repeat.txt``, ``times.txt``, ``stack.txt``. Under ``qemu-system-arm`` the files travel
over semihosting; under ``qemu-aarch64`` they are ordinary. A batch is one link and one boot,
however many samples it holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgec.errors import EdgecError, ToolchainError
from edgec.targets.toolchains import require_tool, section_sizes

if TYPE_CHECKING:
    from edgec.targets.cortex import RuntimeFreeTarget

__all__ = [
    "HarnessResult",
    "build_harness",
    "default_timeout",
    "exchange",
    "launch",
    "qemu_system_command",
    "run_emulator",
    "run_harness",
    "write_harness_config",
]

# Seconds an emulated sample may take before it is called a hang; EDGEC_EMULATOR_TIMEOUT overrides.
DEFAULT_TIMEOUT_SECONDS = 300.0
# How often a running emulator's progress is looked at.
_POLL_SECONDS = 0.5


def default_timeout() -> float:
    """The emulator time limit per sample: ``$EDGEC_EMULATOR_TIMEOUT`` seconds, else 300."""
    value = os.environ.get("EDGEC_EMULATOR_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_SECONDS
    except ValueError as err:
        raise ToolchainError(f"EDGEC_EMULATOR_TIMEOUT must be a number of seconds, not {value!r}") from err


@dataclass(frozen=True)
class HarnessResult:
    """What one harness run produced."""

    outputs: list[np.ndarray]
    seconds: list[float]
    stack_bytes: int | None
    log: str


def qemu_system_command(machine: str, cpu: str, image: Path) -> list[str]:
    """qemu-system-arm for an MPS2/MPS3 board with semihosting (file I/O on the host)."""
    return [
        require_tool("qemu-system-arm", "qemu-system-arm"),
        "-M",
        machine,
        "-cpu",
        cpu,
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        str(image),
    ]


def run_emulator(
    command: Sequence[str], cwd: Path, timeout: float, what: str, progress: Callable[[], int] | None = None
) -> str:
    """Runs an emulator; a hang or a failed run is a ToolchainError (never a hang of edgec).

    Args:
        command: the command line.
        cwd: its working directory.
        timeout: seconds the run may take; with ``progress``, seconds between two advances.
        what: what runs, for messages.
        progress: a count that grows as the run advances (bytes of output written): a batch of
            many samples may take long, a sample may not.
    """
    process = subprocess.Popen(
        list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = progress() if progress else 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, err = process.communicate(timeout=max(0.0, min(_POLL_SECONDS, deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            now = progress() if progress else seen
            if now != seen:
                seen, deadline = now, time.monotonic() + timeout
            elif time.monotonic() >= deadline:
                process.kill()
                process.communicate()
                raise ToolchainError(
                    f"{what} did not finish within {timeout:g} s (of its last completed sample) and was "
                    "stopped; the model may be too slow for the emulator or hung (raise the limit with "
                    "EDGEC_EMULATOR_TIMEOUT=<seconds>)"
                ) from None
    log = (out or "") + (err or "")
    code = process.returncode
    if code != 0 or "edgec-harness: ok" not in log:
        tail = "\n".join(log.strip().splitlines()[-10:]) or "no output"
        if code < 0:
            raise ToolchainError(f"{what} crashed (signal {-code}, {_signal_name(-code)}): {tail}")
        raise ToolchainError(f"{what} failed (exit {code}): {tail}")
    return log


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def exchange(
    workdir: Path,
    inputs: Sequence[np.ndarray],
    output_specs: Sequence[tuple[str, Sequence[int]]],
    repeat: int,
    launch: Callable[[Path], str],
) -> HarnessResult:
    """Writes a batch of inputs (a leading sample axis each), calls ``launch(workdir) -> log``,
    reads the outputs (the same leading axis), timings and stack."""
    counts = {len(array) for array in inputs}
    if len(counts) != 1 or counts == {0}:
        raise EdgecError(
            f"a batch needs the same number (at least 1) of samples per input, got {sorted(counts)}"
        )
    samples = counts.pop()
    for index, array in enumerate(inputs):
        (workdir / f"in{index}.bin").write_bytes(np.ascontiguousarray(array).tobytes())
    (workdir / "edgec_samples.txt").write_text(f"{samples}\n")
    (workdir / "edgec_repeat.txt").write_text(f"{int(repeat)}\n")
    log = launch(workdir)
    outputs = []
    for index, (dtype, shape) in enumerate(output_specs):
        raw = (workdir / f"out{index}.bin").read_bytes()
        expected = samples * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if len(raw) != expected:
            raise ToolchainError(f"the harness wrote {len(raw)} bytes of output {index}, expected {expected}")
        outputs.append(np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(samples, *shape).copy())
    times_file = workdir / "times.txt"
    seconds = [int(x) * 1e-6 for x in times_file.read_text().split()] if times_file.exists() else []
    stack_file = workdir / "stack.txt"
    stack = int(stack_file.read_text().split()[0]) if stack_file.exists() else None
    return HarnessResult(outputs, seconds, stack, log)


def run_harness(
    target: RuntimeFreeTarget,
    build_dir: Path,
    manifest: dict[str, Any],
    inputs: list[np.ndarray],
    repeat: int,
) -> tuple[list[np.ndarray], list[float]]:
    """``Target.run`` of a runtime-free target: links the harness once, runs the whole batch in one
    process (one emulator boot)."""
    build_dir = Path(build_dir)
    libraries = sorted(build_dir.glob("lib*.a"))
    if len(libraries) != 1:
        raise EdgecError(f"'{build_dir}' has {len(libraries)} lib*.a files; expected the one edgec built")
    name = libraries[0].stem.removeprefix("lib")
    outputs = [(o["dtype"], o["shape"]) for o in manifest["outputs"]]
    with tempfile.TemporaryDirectory(prefix="edgec-run-") as work_name:
        work = Path(work_name)
        models = [(name, len(manifest["inputs"]), len(manifest["outputs"]))]
        image = build_harness(target, [build_dir], models, work)
        result = exchange(work, inputs, outputs, repeat, lambda cwd: launch(target, image, cwd))
    return result.outputs, result.seconds


def build_harness(
    target: RuntimeFreeTarget, build_dirs: list[Path], models: list[tuple[str, int, int]], work: Path
) -> Path:
    """Compiles and links the file-based test harness around one or more model libraries.

    Args:
        target: the target the libraries were built for.
        build_dirs: The build directory of each model (same order as ``models``).
        models: ``(name, inputs, outputs)`` per model, see :func:`write_harness_config`.
        work: A scratch folder for the harness and its files.
    """
    from edgec.targets.tvm.c_emitter import runtime_dir

    cross = target.cross()
    if target.bare_metal:
        _check_board_room(
            target, [d / f"lib{name}.a" for d, (name, _, _) in zip(build_dirs, models, strict=True)]
        )
    write_harness_config(work / "harness_config.h", models)
    runtime = runtime_dir()
    image = work / "harness.elf"
    libraries = [d / f"lib{name}.a" for d, (name, _, _) in zip(build_dirs, models, strict=True)]
    includes = [f"-I{d}" for d in build_dirs]
    common = [f"-I{work}", *includes, "-O2", "-std=c11", "-Wl,--gc-sections"]
    if target.bare_metal:
        cross.link(
            image,
            [runtime / "harness.c", runtime / "cortex_m" / "startup.c", *libraries],
            (
                *common,
                "-DEDGEC_BARE_METAL",
                "-nostartfiles",
                "--specs=nano.specs",
                "--specs=rdimon.specs",
                f"-L{runtime / 'cortex_m'}",
                f"-T{runtime / 'cortex_m' / target.linker_script}",
                "-lm",
            ),
        )
    else:
        static = ("-static",) if target.runner == "qemu-aarch64" else ()
        cross.link(image, [runtime / "harness.c", *libraries], (*common, *static, "-lm"))
    return image


def _check_board_room(target: RuntimeFreeTarget, libraries: list[Path]) -> None:
    """Refuses, before linking, weights that the emulated board has no room for: the build may be
    over the target's budget (the budget check says so), but it must fit qemu's RAM to be run."""
    from edgec.targets.boards import board_for

    size_tool = target.cross().tool("size")
    weights = sum(
        v
        for library in libraries
        for k, v in section_sizes(size_tool, library).items()
        if k.startswith(".rodata.edgec_weights")
    )
    room = board_for(target.machine).capacity()["WEIGHTS"]
    if weights > room:
        raise ToolchainError(
            f"the model's weights ({weights} B) exceed the {room} B that qemu's {target.machine} board "
            f"holds for them, so {target.name} builds of it cannot be verified under emulation; "
            "quantize (--quantize int8) or prune the model"
        )


def launch(target: RuntimeFreeTarget, image: Path, cwd: Path, timeout: float | None = None) -> str:
    """Runs a linked harness in ``cwd`` on the target's runner; the time limit applies per sample."""
    limit = timeout if timeout is not None else default_timeout()

    def progress() -> int:
        return _size(cwd / "out0.bin")

    if target.bare_metal:
        command = qemu_system_command(target.machine, target.qemu_cpu, image)
        return run_emulator(command, cwd, limit, f"qemu-system-arm ({target.machine})", progress)
    if target.runner == "host":
        return run_emulator([str(image)], cwd, limit, "the host test harness", progress)
    qemu = require_tool("qemu-aarch64-static", "qemu-user-static")
    return run_emulator(
        [qemu, "-cpu", target.qemu_cpu or "max", str(image)], cwd, limit, "qemu-aarch64", progress
    )


def write_harness_config(path: Path, models: list[tuple[str, int, int]]) -> None:
    """``harness_config.h`` for the harness: static I/O buffers, arenas and one run function.

    Args:
        path: Where to write the header.
        models: ``(name, number of inputs, number of outputs)`` per model. With several models
            (one firmware), the harness runs them in turn; their inputs are numbered on from the
            previous model's (model 0 reads ``in0.bin``.., model 1 the next files), outputs too.
    """
    lines = ["/* generated by edgec for the test harness */", "#include <stdint.h>"]
    lines += [f'#include "{name}.h"' for name, _, _ in models]
    calls = []
    buffers: dict[str, list[str]] = {"input": [], "output": []}
    sizes: dict[str, list[str]] = {"input": [], "output": []}
    for name, num_inputs, num_outputs in models:
        upper = name.upper()
        lines.append(f"static uint8_t {name}_arena[{upper}_ARENA_BYTES + 1] {_big(name + '_arena')};")
        first = {"input": len(buffers["input"]), "output": len(buffers["output"])}
        for kind, count in (("input", num_inputs), ("output", num_outputs)):
            for i in range(count):
                buffer = f"{name}_{kind}{i}"
                size = f"{upper}_{kind.upper()}{i}_BYTES"
                lines.append(f"static uint8_t {buffer}[{size}] {_big(buffer)};")
                buffers[kind].append(buffer)
                sizes[kind].append(size)
        calls.append(
            f"  rc = {name}_run((const void *const *)(harness_inputs + {first['input']}), "
            f"(void *const *)(harness_outputs + {first['output']}), {name}_arena);\n"
            "  if (rc != 0) return rc;"
        )
    for kind in ("input", "output"):
        lines.append(f"#define HARNESS_NUM_{kind.upper()}S {len(buffers[kind])}")
        lines.append(f"static uint8_t *const harness_{kind}s[] = {{{', '.join(buffers[kind]) or '0'}}};")
        lines.append(f"static const uint32_t harness_{kind}_bytes[] = {{{', '.join(sizes[kind]) or '0'}}};")
    lines.append("static int harness_run(void) {\n  int rc;\n" + "\n".join(calls) + "\n  return 0;\n}")
    path.write_text("\n".join(lines) + "\n")


def _big(symbol: str) -> str:
    """Attributes of a large harness buffer: aligned, and in the board script's BIG region."""
    return f'__attribute__((aligned(16), section(".bss.edgec_big.{symbol}")))'
