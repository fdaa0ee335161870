"""Relax → shared library for Linux CPU targets (x86-64 now, AArch64 through a cross compiler).

The flow: :func:`optimize_for_cpu` (inference decompositions, NHWC layout, the Relax zero pipeline
and edgec's default schedules), :func:`build_shared_library` (``tvm.compile`` + link), and the
runners :func:`run_shared_library` / :func:`time_shared_library` used by ``edgec run``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgec.errors import EdgecError, ToolchainError

if TYPE_CHECKING:
    import tvm

__all__ = [
    "build_shared_library",
    "lower_for_cpu",
    "micro_kernels_built",
    "optimize_for_cpu",
    "run_shared_library",
    "time_shared_library",
    "tuning_module",
]


def lower_for_cpu(mod: tvm.IRModule, tvm_target: dict) -> tvm.IRModule:
    """Lower a Relax module to unscheduled TIR kernels for a CPU.

    Steps: decompose inference-only ops (BatchNorm becomes a scale and shift that fold into the
    conv epilogue), convert conv2d to NHWC/HWIO (the layout the conv schedules are written for;
    the weight transposes constant-fold), run the Relax ``zero`` pipeline (legalize, fold, fuse;
    each packed weight's unpack joins the kernel of its conv2d/matmul, :mod:`.weight_fusion`)
    under the target.
    """
    import tvm
    from tvm import relax

    from .relax_rewrites import clip_as_min_max, fold_constants_with_numpy
    from .weight_fusion import zero_pipeline

    with tvm.target.Target(tvm_target):
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = fold_constants_with_numpy()(mod)
        mod = clip_as_min_max()(mod)
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        mod = fold_constants_with_numpy()(mod)
        # Relax's zero pipeline plus the fusion of packed-weight decodes into their consumers.
        return zero_pipeline()(mod)


def tuning_module(mod: tvm.IRModule, tvm_target: dict, micro_kernels: bool = True) -> tvm.IRModule:
    """What MetaSchedule tunes: :func:`lower_for_cpu`'s kernels with only the int8 micro-kernel
    rules applied (their hand-written kernels are not tuned; the float kernels stay unscheduled)."""
    import tvm
    from tvm.s_tir import dlight

    from .schedules import micro_kernel_rules
    from .weight_fusion import inline_weight_decode

    target = tvm.target.Target(tvm_target)
    with target:
        mod = inline_weight_decode()(lower_for_cpu(mod, tvm_target))
        rules = micro_kernel_rules(target, micro_kernels)
        return dlight.ApplyDefaultSchedule(*rules)(mod) if rules else mod


def _scheduled_kernels(mod: tvm.IRModule) -> set[str]:
    import tvm

    return {
        gv.name_hint
        for gv, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
        and func.attrs is not None
        and func.attrs.get("tirx.is_scheduled")
    }


def optimize_for_cpu(
    mod: tvm.IRModule, tvm_target: dict, micro_kernels: bool = True, database: Any = None
) -> tvm.IRModule:
    """Lower a Relax module to scheduled TIR for a CPU, ready for ``tvm.compile``.

    :func:`lower_for_cpu`, then the int8 micro-kernel rules, the tuning database's best records
    (when ``database``, a MetaSchedule database, is given) and :mod:`.schedules`' default rules
    for the rest.

    Args:
        mod: A Relax module, e.g. from :func:`edgec.targets.tvm.frontend.import_onnx`.
        tvm_target: The TVM target as a JSON dict, e.g. ``{"kind": "llvm", "mcpu": "znver4"}``.
        micro_kernels: schedule int8 convolutions and matmuls with the CPU's micro-kernel
            (vpmaddwd, SMLAD) where it has one (``Target.micro_kernels``).
        database: tuning records to apply first (:mod:`.tuning`).

    Returns:
        The module with every PrimFunc the rules match marked ``tirx.is_scheduled``.
    """
    import tvm
    from tvm import relax

    from . import arm_dsp, x86_int8
    from .schedules import apply_default_cpu_schedules

    target = tvm.target.Target(tvm_target)
    mod = tuning_module(mod, tvm_target, micro_kernels)
    if database is not None:
        before = _scheduled_kernels(mod)
        with target, database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        # How many kernels the database scheduled, for the manifest.
        mod = mod.with_attr("edgec.tuned_kernels", len(_scheduled_kernels(mod) - before))
    with target:
        mod = apply_default_cpu_schedules(target, micro_kernels)(mod)
    # vpmaddwd kernels (x86 AVX2) read pair-interleaved weights, SMLAD kernels (Cortex-M4/M7)
    # input-channel-innermost ones: re-lay out the constants (a no-op when no kernel was
    # scheduled that way).
    return arm_dsp.relayout_constant_weights(x86_int8.relayout_constant_weights(mod))


def micro_kernels_built(mod: tvm.IRModule) -> dict[str, int]:
    """How many kernels of a scheduled module each int8 micro-kernel computes (``{"vpdpbusd": 2}``),
    read from the weight layouts the rules recorded, so the manifest shows what the CPU got and
    which kernels a rule declined (those are absent from the count)."""
    from . import arm_dsp, x86_int8

    counts: dict[str, int] = {}
    for func in mod.functions.values():
        layout = x86_int8.weight_layout(func)
        if layout:
            name = x86_int8.MICRO_KERNEL_BY_GROUP[next(iter(layout.values()))[0]]
        elif arm_dsp.weight_permutation(func):
            name = "smlad"
        else:
            continue
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _fcompile(cc: str | None, cc_options: list[str] | None, extra_objects: list[str]) -> Any:
    """The link step for ``export_library``: host gcc, or ``cc`` (a cross compiler), with
    ``extra_objects`` (edgec's own objects, such as the thread default) linked in."""
    from tvm.support import cc as tvm_cc

    options = list(cc_options or [])
    compiler = cc or tvm_cc.get_cc() or "gcc"

    def create_shared(output: str, objects: list[str], options_: list[str] | None = None) -> None:
        # export_library adds its own options (include paths for C modules); keep ours first.
        tvm_cc.create_shared(
            output, [*objects, *extra_objects], options=options + list(options_ or []), cc=compiler
        )

    return create_shared


def _thread_default_object(cc: str | None, threads: int, folder: pathlib.Path) -> str:
    """``edgec_threads.c`` compiled for the library (see :mod:`.threads`)."""
    import subprocess

    from .c_emitter import runtime_dir

    obj = folder / "edgec_threads.o"
    command = [
        cc or "gcc",
        "-c",
        "-O2",
        "-fPIC",
        f"-DEDGEC_THREADS={int(threads)}",
        str(runtime_dir() / "edgec_threads.c"),
        "-o",
        str(obj),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ToolchainError(f"compiling edgec_threads.c failed: {done.stderr.strip()}")
    return str(obj)


def build_shared_library(
    mod: tvm.IRModule,
    tvm_target: dict,
    out_path: pathlib.Path,
    *,
    cc: str | None = None,
    cc_options: list[str] | None = None,
    threads: int = 0,
) -> None:
    """Compile a (scheduled) Relax module and link it into a shared library for the Relax VM.

    The library is written atomically: linked to a temporary file in the same folder, then
    renamed over ``out_path``, so a failed build never leaves a truncated library behind.

    Args:
        mod: The module, normally the output of :func:`optimize_for_cpu`.
        tvm_target: The TVM target dict; for AArch64, e.g.
            ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}``.
        out_path: Where to write the ``.so``.
        cc: The linker driver; ``None`` uses the host compiler (``$CXX`` or g++), a cross
            target needs e.g. ``"aarch64-linux-gnu-gcc"``.
        cc_options: Extra linker options.
        threads: The thread count the library defaults to when loaded (0: the physical cores of
            the machine it runs on); ``TVM_NUM_THREADS``/``OMP_NUM_THREADS`` still win
            (:mod:`.threads`).

    Raises:
        ToolchainError: If the compiler driver is missing or the link fails.
        EdgecError: If TVM fails to compile the module.
    """
    import shutil

    import tvm

    if cc is not None and shutil.which(cc) is None:
        raise ToolchainError(
            f"the compiler '{cc}' is not on PATH; install it (e.g. apt-get install "
            "gcc-aarch64-linux-gnu for aarch64-linux-gnu-gcc) or pass the full path"
        )
    try:
        executable = tvm.compile(mod, tvm.target.Target(tvm_target))
    except (RuntimeError, ValueError, TypeError) as err:  # TVM FFI errors (no TVMError)
        raise EdgecError(f"TVM failed to compile the model for {tvm_target}: {err}") from err

    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        # Libraries are byte-identical from build to build (checked: no timestamps, and the GNU
        # build-id is a content hash), even with TVM's random temp dirs; a fixed workspace name
        # keeps it so should a toolchain start embedding object file paths.
        with tempfile.TemporaryDirectory(prefix="edgec-link-") as scratch:
            workspace = pathlib.Path(scratch) / "ws"
            workspace.mkdir()
            extra = [_thread_default_object(cc, threads, pathlib.Path(scratch))]
            try:
                executable.export_library(
                    tmp_name, fcompile=_fcompile(cc, cc_options, extra), workspace_dir=str(workspace)
                )
            except RuntimeError as err:
                raise ToolchainError(f"linking {out_path.name} failed: {err}") from err
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, out_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _load_vm(lib_path: pathlib.Path, threads: int = 0) -> Any:
    import tvm
    from tvm import relax

    from .threads import configure_thread_pool

    lib_path = pathlib.Path(lib_path)
    if not lib_path.is_file():
        raise EdgecError(f"no compiled library at {lib_path}; build the model first")
    lib = tvm.runtime.load_module(str(lib_path))
    try:
        configure_thread_pool(threads)
    except ValueError as err:
        raise EdgecError(str(err)) from err
    return relax.VirtualMachine(lib, tvm.cpu())


def _flatten(value: Any, out: list[np.ndarray]) -> list[np.ndarray]:
    """Relax outputs (a tensor or nested tuples of tensors) as numpy arrays, in order."""
    if hasattr(value, "numpy"):
        out.append(value.numpy())
    elif isinstance(value, list | tuple) or type(value).__name__ in ("Array", "Tuple"):
        for item in value:
            _flatten(item, out)
    else:
        # tvm_ffi containers (Array) are sequences without numpy(); anything else is a bug.
        try:
            items = list(value)
        except TypeError as err:
            raise EdgecError(f"unexpected output of type {type(value).__name__}") from err
        for item in items:
            _flatten(item, out)
    return out


def _to_device(inputs: list[np.ndarray]) -> list[Any]:
    import tvm

    dev = tvm.cpu()
    # np.asarray keeps 0-d arrays 0-d; np.ascontiguousarray would make a scalar input 1-d, which
    # the VM refuses ("expect Tensor with ndim 0 but get 1").
    return [tvm.runtime.tensor(np.asarray(x, order="C"), dev) for x in inputs]


def run_shared_library(
    lib_path: pathlib.Path, inputs: list[np.ndarray], threads: int = 0
) -> list[np.ndarray]:
    """Run a library built by :func:`build_shared_library` on the host CPU.

    Args:
        lib_path: The ``.so``.
        inputs: One array per model input, in the model's input order.
        threads: The thread count it was compiled with (0: the physical cores; see
            :func:`.threads.requested_threads`).

    Returns:
        The outputs as numpy arrays, tuple outputs flattened in order.
    """
    vm = _load_vm(lib_path, threads)
    result = vm["main"](*_to_device(inputs))
    return _flatten(result, [])


def time_shared_library(
    lib_path: pathlib.Path, inputs: list[np.ndarray], repeat: int, threads: int = 0
) -> list[float]:
    """Time ``repeat`` runs of a library (after one warm-up run).

    Inputs are copied to the device once; each timing covers one call of ``main`` including
    its output allocation, as a user of the library would see it.

    Args:
        lib_path: The ``.so``.
        inputs: One array per model input.
        repeat: How many timed runs (at least 1).
        threads: As for :func:`run_shared_library`.

    Returns:
        Seconds per run, in run order.
    """
    if repeat < 1:
        raise EdgecError(f"repeat must be at least 1, got {repeat}")
    vm = _load_vm(lib_path, threads)
    main = vm["main"]
    args = _to_device(inputs)
    main(*args)
    times: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        main(*args)
        times.append(time.perf_counter() - start)
    return times
