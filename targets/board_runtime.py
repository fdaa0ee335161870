"""The TVM runtime of an AArch64 Linux board, for tuning over TVM RPC (:mod:`.rpc_server`).

A board measures tuning candidates with TVM's own runtime: ``libtvm_runtime.so``,
``libtvm_runtime_extra.so`` (MetaSchedule's argument filler) and ``libtvm_ffi.so`` from the
aarch64 wheels of the same TVM and tvm-ffi versions as the host's. Those wheels are fetched once,
at install time (``scripts/setup.sh`` runs ``python -m edgec.targets.board_runtime``, which uses
pip), into a cache folder; nothing is downloaded at run time. The board side of the RPC server,
``runtime/rpc/edgec_rpc_server.c``, is compiled against them with the target's cross gcc.

The cache folder is ``$EDGEC_BOARD_RUNTIME`` or ``~/.cache/edgec/board-runtime/aarch64-tvm<V>-ffi<V>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgec.errors import EdgecError
from edgec.targets.toolchains import CrossToolchain, run_tool

__all__ = ["LIBRARIES", "board_runtime_dir", "fetch_board_runtime", "server_program"]

# Library name -> (wheel project, path inside the wheel).
LIBRARIES = {
    "libtvm_runtime.so": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
    "libtvm_runtime_extra.so": ("apache-tvm", "tvm/lib/libtvm_runtime_extra.so"),
    "libtvm_ffi.so": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"),
}
# manylinux tags the aarch64 wheels are published under (pip picks the one that exists).
_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")


def _versions() -> dict[str, str]:
    """The host's TVM and tvm-ffi versions: the board runs the same ones (one RPC protocol)."""
    from importlib.metadata import version

    return {project: version(project) for project in ("apache-tvm", "apache-tvm-ffi")}


def board_runtime_dir() -> Path:
    """Where the aarch64 TVM runtime libraries are cached."""
    override = os.environ.get("EDGEC_BOARD_RUNTIME")
    if override:
        return Path(override)
    versions = _versions()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (
        cache
        / "edgec"
        / "board-runtime"
        / f"aarch64-tvm{versions['apache-tvm']}-ffi{versions['apache-tvm-ffi']}"
    )


def fetch_board_runtime(folder: Path | None = None) -> Path:
    """Downloads the aarch64 wheels of the host's TVM versions with pip and keeps their runtime
    libraries in ``folder`` (install time only; a no-op when they are there)."""
    folder = Path(folder or board_runtime_dir())
    if all((folder / name).is_file() for name in LIBRARIES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgec-wheels-") as scratch:
        for project, version in _versions().items():
            platforms = [arg for platform in _PLATFORMS for arg in ("--platform", platform)]
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            command += [*platforms, "--python-version", "3.11", "-d", scratch, f"{project}=={version}"]
            subprocess.run(command, check=True)
        wheels = list(Path(scratch).glob("*.whl"))
        for name, (project, member) in LIBRARIES.items():
            prefix = project.replace("-", "_") + "-"
            wheel = next(w for w in wheels if w.name.startswith(prefix))
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
                partial = folder / f".{name}.part"
                with partial.open("wb") as target:
                    shutil.copyfileobj(source, target)
                partial.replace(folder / name)
    return folder


def _source() -> Path:
    from edgec.targets.tvm.c_emitter import runtime_dir

    return runtime_dir() / "rpc" / "edgec_rpc_server.c"


def server_program(cross: CrossToolchain) -> Path:
    """The board side of the RPC server, compiled for the board (cached by its source's hash),
    beside the runtime libraries it loads through its ``$ORIGIN`` run path."""
    import tvm_ffi

    folder = board_runtime_dir()
    missing = [name for name in LIBRARIES if not (folder / name).is_file()]
    if missing:
        raise EdgecError(
            f"the board's TVM runtime ({', '.join(missing)}) is not in '{folder}'; fetch it once with "
            "'python -m edgec.targets.board_runtime' (scripts/setup.sh does) or set EDGEC_BOARD_RUNTIME"
        )
    source = _source()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    program = folder / f"edgec_rpc_server-{digest}"
    if program.is_file():
        return program
    include = Path(tvm_ffi.__file__).parent / "include"
    partial = folder / f".{program.name}.{os.getpid()}"
    run_tool(
        [
            cross.tool("gcc"),
            "-std=c11",
            "-O2",
            "-Wall",
            f"-I{include}",
            f"-I{include / 'dlpack'}",
            str(source),
            "-o",
            str(partial),
            f"-L{folder}",
            # The extra library registers the argument filler when loaded: keep it though unreferenced.
            "-Wl,--no-as-needed",
            "-ltvm_runtime_extra",
            "-ltvm_runtime",
            "-ltvm_ffi",
            "-Wl,-rpath,$ORIGIN",
        ],
        what="compiling the board's RPC server",
    )
    partial.replace(program)
    return program


if __name__ == "__main__":
    print(fetch_board_runtime())
