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


def read_stack_usage(su_file: Path) -> dict[str, int]:
    """gcc ``-fstack-usage`` output: ``file:line:col:function<TAB>bytes<TAB>qualifiers``."""
    frames: dict[str, int] = {}
    if su_file.exists():
        for line in su_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip().isdigit():
                frames[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    return frames


def stack_estimate(frames: dict[str, int], name: str, kernels: dict[str, int]) -> tuple[int, dict[str, Any]]:
    """An upper bound of the stack one call needs: entry + step loop + the deepest kernel.

    A TVM kernel is a wrapper ``__tvm_ffi_<prefix><k>`` calling ``<prefix><k>_compute_`` and,
    through the shim's serial ``TVMBackendParallelLaunch``, its parallel lambdas; every frame
    that carries the kernel's name is summed. TVM turns buffers of at most 1 KiB into stack arrays
    realigned to 64 bytes, so such a frame is addressed through a frame pointer and its size is
    not in the frame tables: their bytes come from the lowered TIR (``kernel_memory``) and are
    added. The harness measures the real high-water mark on bare metal (``stack.txt``).

    Args:
        frames: Frame bytes per function (:func:`frame_sizes`, :func:`read_stack_usage`).
        name: The model's prefix.
        kernels: Kernel name to the bytes of its stack arrays.

    Returns:
        The estimate and how it was made up.
    """
    entry = frames.get(f"{name}_run", 0) + frames.get("edgec_run_steps", 0)
    shim = max(frames.get(f, 0) for f in ("TVMBackendParallelLaunch", "TVMBackendAllocWorkspace"))
    deepest, deepest_kernel = 0, ""
    for kernel, arrays in sorted(kernels.items()):
        symbol = f"{name}_{kernel}"
        total = arrays + sum(
            v for f, v in frames.items() if f == f"__tvm_ffi_{symbol}" or f.startswith(symbol + "_")
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
        "method": "DWARF frame info (kernels) + gcc -fstack-usage (entry, shim) + TIR stack arrays",
    }
    return entry + shim + deepest + margin, detail
