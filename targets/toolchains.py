"""Cross toolchains: find the tools, compile, archive, link, and measure sizes.

Every external tool goes through :func:`run_tool`, which has a time limit and turns a missing tool
or a failed command into a :class:`~edgec.errors.ToolchainError` that names the Debian package to
install, or shows the tail of the tool's own error output.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgec.errors import ToolchainError

__all__ = [
    "CrossToolchain",
    "frame_sizes",
    "link_probe",
    "prologue_frames",
    "read_stack_usage",
    "relevant_lines",
    "require_tool",
    "run_tool",
    "section_sizes",
    "stack_estimate",
]

# Compiling the weights of a large model (megabytes of initializers) takes a while.
COMPILE_TIMEOUT_SECONDS = 600


def require_tool(tool: str, debian_package: str) -> str:
    """The full path of ``tool``, or a ToolchainError that says which package provides it."""
    path = shutil.which(tool)
    if path is None:
        raise ToolchainError(
            f"'{tool}' is not on PATH; install it with: apt-get install {debian_package} "
            "(the Debian/Ubuntu package that provides it)"
        )
    return path


def run_tool(
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    timeout: float = COMPILE_TIMEOUT_SECONDS,
    what: str = "",
) -> subprocess.CompletedProcess[str]:
    """Runs a build tool; raises ToolchainError on failure or timeout (with its stderr tail)."""
    label = what or Path(command[0]).name
    try:
        done = subprocess.run(
            list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise ToolchainError(f"{label} did not finish within {timeout:.0f} s: {' '.join(command)}") from err
    except FileNotFoundError as err:
        raise ToolchainError(f"{label}: '{command[0]}' is not installed") from err
    if done.returncode != 0:
        log = _failure_log(command, done)
        quoted = "\n".join(f"  {line}" for line in relevant_lines(done.stderr + done.stdout))
        raise ToolchainError(
            f"{label} failed (exit {done.returncode}); command line and full output: {log}\n{quoted}"
        )
    return done


# Lines of a tool's output that say what went wrong (gcc, ld, as, make).
_RELEVANT = re.compile(
    r"error|overflow|undefined reference|cannot find|no such file|fatal|multiple definition", re.I
)


def relevant_lines(output: str, limit: int = 8) -> list[str]:
    """The lines of a failed tool's output worth quoting: its error lines, else its last lines."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    chosen = [line for line in lines if _RELEVANT.search(line)] or lines[-limit:]
    return chosen[:limit] or ["(no output)"]


def _failure_log(command: Sequence[str], done: subprocess.CompletedProcess[str]) -> Path:
    """Writes a failed tool's command line and output to a log that outlives the build (whose
    staging folder is removed on error); returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="edgec-tool-log-"))
    log = folder / f"{Path(command[0]).name}.log"
    log.write_text(
        f"$ {shlex.join(command)}\nexit {done.returncode}\n"
        f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"
    )
    return log


@dataclass(frozen=True)
class CrossToolchain:
    """A GCC cross toolchain (``<prefix>gcc``, ``ar``, ``size``, ``objcopy``, ``nm``).

    Attributes:
        prefix: Tool prefix, e.g. ``aarch64-linux-gnu-`` or ``arm-none-eabi-``.
        debian_package: The package that provides the compiler.
        cflags: Code generation flags (CPU, FPU, float ABI) for every C file.
        binutils_package: The package that provides ``ar``/``size`` (often a dependency).
    """

    prefix: str
    debian_package: str
    cflags: tuple[str, ...]
    binutils_package: str = ""

    def tool(self, name: str) -> str:
        package = self.binutils_package if name != "gcc" and self.binutils_package else self.debian_package
        return require_tool(self.prefix + name, package)

    def compile(self, source: Path, obj: Path, extra: Sequence[str] = ()) -> Path:
        """Compiles one C file (``-O2``, sections per function/data for ``--gc-sections``)."""
        run_tool(
            [
                self.tool("gcc"),
                "-std=c11",
                *self.cflags,  # after -std, so that a target may ask for C99
                "-O2",
                "-ffunction-sections",
                "-fdata-sections",
                "-Wall",
                *extra,
                "-c",
                str(source),
                "-o",
                str(obj),
            ],
            what=f"compiling {source.name}",
        )
        return obj

    def archive(self, library: Path, objects: Sequence[Path]) -> Path:
        """A deterministic static library (``ar`` D mode: no timestamps, uids or modes)."""
        library.unlink(missing_ok=True)
        run_tool(
            [self.tool("ar"), "rcsD", str(library), *map(str, objects)], what=f"archiving {library.name}"
        )
        return library

    def link(self, output: Path, inputs: Sequence[Path | str], flags: Sequence[str] = ()) -> Path:
        """Links with the gcc driver (so libgcc, libc and libm resolve as usual)."""
        run_tool(
            [self.tool("gcc"), *self.cflags, *map(str, inputs), *flags, "-o", str(output)],
            what=f"linking {output.name}",
        )
        return output


def section_sizes(size_tool: str, elf: Path) -> dict[str, int]:
    """Bytes per section of a linked image, from ``<prefix>size -A`` (sysv format)."""
    done = run_tool([size_tool, "-A", str(elf)], what=f"measuring {elf.name}")
    sizes: dict[str, int] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = sizes.get(parts[0], 0) + int(parts[1])
    return sizes


def frame_sizes(toolchain: CrossToolchain, elf: Path) -> dict[str, int]:
    """Stack frame bytes per function, from the DWARF call-frame information of a linked image.

    ``readelf --debug-dump=frames-interp`` tabulates, per function (FDE), the canonical frame
    address as ``sp+N`` at every point of the code; the largest ``N`` is the frame size. TVM's
    LLVM kernels carry this information (``.debug_frame`` / ``.eh_frame``); functions without it
    (gcc code built without ``-g`` on bare metal) are absent from the result.

    Returns:
        Function name to frame bytes.
    """
    dump = run_tool(
        [toolchain.tool("readelf"), "--debug-dump=frames-interp", str(elf)], what="reading frame info"
    ).stdout
    frames: dict[int, int] = {}
    start = None
    for line in dump.splitlines():
        if " FDE " in line and "pc=" in line:
            start = int(line.split("pc=")[1].split("..")[0], 16) & ~1  # Thumb addresses: bit 0 set
            frames[start] = 0
            continue
        parts = line.split()
        if start is not None and len(parts) >= 2 and "+" in parts[1] and parts[1].split("+")[1].isdigit():
            frames[start] = max(frames[start], int(parts[1].split("+")[1]))
    symbols = run_tool([toolchain.tool("nm"), str(elf)], what="listing symbols").stdout
    named: dict[str, int] = {}
    for line in symbols.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            address = int(parts[0], 16) & ~1
            if address in frames:
                named[parts[2]] = frames[address]
    return named


_PROLOGUE = 16  # instructions of a function's start read for its frame
_REGISTER_RANGE = re.compile(r"[rds](\d+)-[rds](\d+)")


def _registers(operand: str) -> int:
    count = 0
    for item in operand.strip("{} ").split(","):
        bounds = _REGISTER_RANGE.fullmatch(item.strip())
        count += int(bounds.group(2)) - int(bounds.group(1)) + 1 if bounds else 1
    return count


def prologue_frames(toolchain: CrossToolchain, elf: Path) -> dict[str, int]:
    """Frame bytes per Arm function from its prologue: pushes, ``sub sp`` and realignment.

    A function with 64-byte aligned stack arrays (TVM's, for buffers under 1 KiB) realigns ``sp``
    and then addresses its frame through a frame pointer, so the DWARF table (:func:`frame_sizes`)
    never sees the ``sub sp`` of its locals and spills; the prologue does.
    """
    dump = run_tool([toolchain.tool("objdump"), "-d", str(elf)], what="disassembling").stdout
    frames: dict[str, int] = {}
    function, seen = "", 0
    for line in dump.splitlines():
        header = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if header:
            function, seen = header.group(1), 0
            frames[function] = 0
            continue
        parts = line.split("\t")
        if not function or len(parts) < 4 or seen >= _PROLOGUE:
            continue
        seen += 1
        mnemonic, operands = parts[2].strip(), parts[3].strip()
        if mnemonic in ("push", "push.w") or (mnemonic == "stmdb" and operands.startswith("sp!")):
            frames[function] += 4 * _registers(operands.split("!,")[-1])
        elif mnemonic == "vpush":
            frames[function] += (8 if "d" in operands else 4) * _registers(operands)
        elif mnemonic in ("sub", "sub.w", "subw") and operands.startswith("sp,") and "#" in operands:
            frames[function] += int(operands.rsplit("#", 1)[1].split()[0], 0)
        elif mnemonic == "bfc" and operands.endswith(tuple(f"#{bits}" for bits in range(2, 8))):
            frames[function] += 2 ** int(operands.rsplit("#", 1)[1])  # realignment slack
    return {name: size for name, size in frames.items() if size}


def read_stack_usage(su_file: Path) -> dict[str, int]:
    """gcc ``-fstack-usage`` output: ``file:line:col:function<TAB>bytes<TAB>qualifiers``."""
    frames: dict[str, int] = {}
    if su_file.exists():
        for line in su_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip().isdigit():
                frames[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    return frames


def stack_estimate(
    frames: dict[str, int], name: str, kernels: dict[str, int], prologues: dict[str, int] | None = None
) -> tuple[int, dict[str, Any]]:
    """An upper bound of the stack one call needs: entry + step loop + the deepest kernel.

    A TVM kernel is a wrapper ``__tvm_ffi_<prefix><k>`` calling ``<prefix><k>_compute_`` and,
    through the shim's serial ``TVMBackendParallelLaunch``, its parallel lambdas; every frame
    that carries the kernel's name is summed. TVM turns buffers of at most 1 KiB into stack arrays
    realigned to 64 bytes, so such a frame is addressed through a frame pointer and its size is
    not in the frame tables: their bytes come from the lowered TIR (``kernel_memory``) and are
    added, unless the prologues (:func:`prologue_frames`, which see the locals, spills included)
    say more. The harness measures the real high-water mark on bare metal (``stack.txt``).

    Args:
        frames: Frame bytes per function (:func:`frame_sizes`, :func:`read_stack_usage`).
        name: The model's prefix.
        kernels: Kernel name to the bytes of its stack arrays.
        prologues: Frame bytes per function read from its prologue.

    Returns:
        The estimate and how it was made up.
    """
    prologues = prologues or {}
    entry = frames.get(f"{name}_run", 0) + frames.get("edgec_run_steps", 0)
    shim = max(frames.get(f, 0) for f in ("TVMBackendParallelLaunch", "TVMBackendAllocWorkspace"))
    deepest, deepest_kernel = 0, ""
    for kernel, arrays in sorted(kernels.items()):
        symbol = f"{name}_{kernel}"
        own = [f for f in {*frames, *prologues} if f == f"__tvm_ffi_{symbol}" or f.startswith(symbol + "_")]
        total = max(
            arrays + sum(frames.get(f, 0) for f in own),
            sum(max(frames.get(f, 0), prologues.get(f, 0)) for f in own),
        )
        if total > deepest:
            deepest, deepest_kernel = total, kernel
    # libm/libgcc helpers called from kernels (expf, ...) have no frame entries on bare metal.
    margin = 256
    detail = {
        "entry_bytes": entry,
        "shim_bytes": shim,
        "deepest_kernel": deepest_kernel,
        "deepest_kernel_bytes": deepest,
        "margin_bytes": margin,
        "method": "DWARF frame info and prologues (kernels) + gcc -fstack-usage (entry, shim) "
        "+ TIR stack arrays",
    }
    return entry + shim + deepest + margin, detail


def link_probe(
    cross: CrossToolchain, out_dir: Path, name: str, scratch: Path, support: Path, empty: bool = False
) -> Path:
    """A minimal firmware that only calls ``<name>_run`` (or nothing): its size is the model's.

    Args:
        cross: The bare-metal toolchain.
        out_dir: The build directory with ``lib<name>.a`` and ``<name>.h``.
        name: The model's C prefix.
        scratch: Where the probe's source, linker script and image go.
        support: The folder with ``sections.ld`` (the runtime's ``cortex_m``).
        empty: Link a probe that calls nothing (the baseline to subtract).
    """
    upper = name.upper()
    probe = scratch / f"probe{'_empty' if empty else ''}.c"
    call = (
        ""
        if empty
        else (
            f"  static const void *in[{upper}_NUM_INPUTS];\n  static void *out[{upper}_NUM_OUTPUTS];\n"
            f"  return {name}_run(in, out, arena);\n"
        )
    )
    probe.write_text(
        f'#include <stdint.h>\n#include "{name}.h"\n'
        f"static uint8_t arena[{upper}_ARENA_BYTES + 1] __attribute__((aligned(16)));\n"
        "extern uint8_t __stack_top[];\nint probe_main(void);\n"
        '__attribute__((section(".vectors"), used)) static void *const vectors[2] = '
        "{__stack_top, (void *)probe_main};\n"
        f"int probe_main(void) {{\n  (void)arena;\n{call}  return 0;\n}}\n"
    )
    image = scratch / f"probe{'_empty' if empty else ''}.elf"
    # Generous regions: the probe is measured, never run, and must link even when the model
    # is larger than the board (the budget check then says by how much).
    script = scratch / "probe.ld"
    script.write_text(
        "ENTRY(probe_main)\nMEMORY\n{\n  FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 1024M\n"
        "  RAM (rwx) : ORIGIN = 0x40000000, LENGTH = 1024M\n}\n"
        'REGION_ALIAS("VECTORS", FLASH);\nREGION_ALIAS("WEIGHTS", FLASH);\nREGION_ALIAS("BIG", RAM);\n'
        "INCLUDE sections.ld\n"
    )
    cross.link(
        image,
        [probe, out_dir / f"lib{name}.a"],
        (
            f"-I{out_dir}",
            "-O2",
            "-nostartfiles",
            "--specs=nano.specs",
            "-Wl,--gc-sections",
            f"-L{support}",
            f"-T{script}",
            "-lm",
            "-lc",
            "-lnosys",
        ),
    )
    return image
