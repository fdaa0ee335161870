"""Relax → shared library for Linux CPU targets (x86-64 now, AArch64 through a cross compiler).

The flow: :func:`optimize_for_cpu` (inference decompositions, NHWC layout, the Relax zero pipeline
and edgec's default schedules), :func:`build_shared_library` (``tvm.compile`` + link), and the
runner in :mod:`.library_runner` (``edgec run``, in the x86 target's worker process).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import TYPE_CHECKING, Any

from edgec.errors import EdgecError, ToolchainError

if TYPE_CHECKING:
    import tvm

__all__ = [
    "build_shared_library",
    "lower_for_cpu",
    "micro_kernels_built",
    "optimize_for_cpu",
    "tuning_module",
]


def lower_for_cpu(mod: tvm.IRModule, tvm_target: dict, memory_first: bool = False) -> tvm.IRModule:
    """Lower a Relax module to unscheduled TIR kernels for a CPU.

    Steps: decompose inference-only ops (BatchNorm becomes a scale and shift that fold into the
    conv epilogue), convert conv2d to NHWC/HWIO (the layout the conv schedules are written for;
    the weight transposes constant-fold), outline the fused conv + pool chains, run the Relax
    ``zero`` pipeline (legalize, fold, fuse; each packed weight's unpack joins the kernel of its
    conv2d/matmul, :mod:`.weight_fusion`) under the target.
    """
    import tvm
    from tvm import relax

    from .fused_kernels import outline_fused_kernels
    from .group_padding import pad_group_channels
    from .relax_rewrites import clip_as_min_max, fast_transcendentals, fold_constants_with_numpy
    from .schedule_common import cpu_vector_info
    from .weight_fusion import zero_pipeline

    target = tvm.target.Target(tvm_target)
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = fold_constants_with_numpy()(mod)
        mod = clip_as_min_max()(mod)
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        mod = fold_constants_with_numpy()(mod)
        # After the layout conversion, which would wrap the polynomials' kernels in transposes.
        mod = fast_transcendentals()(mod)
        if target.kind.name == "llvm" and not memory_first:
            # Not under a RAM budget: the padded channels cost activation memory.
            mod = pad_group_channels(cpu_vector_info(target).lanes)(mod)
        # Fused conv + pool chains (named by the emission, see fused_kernels) as one function each.
        mod = outline_fused_kernels(mod)
        # Relax's zero pipeline plus the fusion of packed-weight decodes into their consumers.
        return zero_pipeline(memory_first)(mod)


def tuning_module(
    mod: tvm.IRModule, tvm_target: dict, micro_kernels: bool = True, memory_first: bool = False
) -> tvm.IRModule:
    """What MetaSchedule tunes: :func:`lower_for_cpu`'s kernels with only the hand-written kernels'
    rules applied (:func:`.schedules.fixed_rules`: they are not tuned; the float kernels stay
    unscheduled)."""
    import tvm
    from tvm.s_tir import dlight

    from .schedules import fixed_rules
    from .weight_fusion import inline_weight_decode

    target = tvm.target.Target(tvm_target)
    with target:
        mod = inline_weight_decode()(lower_for_cpu(mod, tvm_target, memory_first))
        rules = fixed_rules(target, micro_kernels, memory_first)
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
    mod: tvm.IRModule,
    tvm_target: dict,
    micro_kernels: bool = True,
    memory_first: bool = False,
    database: Any = None,
) -> tvm.IRModule:
    """Lower a Relax module to scheduled TIR for a CPU, ready for ``tvm.compile``.

    :func:`lower_for_cpu`, then the int8 micro-kernel rules, the tuning database's best records
    (when ``database``, a MetaSchedule database, is given) and :mod:`.schedules`' default rules
    for the rest.

    Args:
        mod: A Relax module, e.g. from :func:`edgec.targets.tvm.frontend.import_onnx`.
        tvm_target: The TVM target as a JSON dict, e.g. ``{"kind": "llvm", "mcpu": "znver4"}``.
        micro_kernels: schedule int8 convolutions and matmuls with the CPU's micro-kernel
            (vpdpbusd, vpmaddwd, sdot, sadalp, SMLAD) where it has one (``Target.micro_kernels``).
        memory_first: keep padded inputs and pre-pool tensors out of memory
            (:mod:`.fused_kernels`, :mod:`.fused_schedules`; ``TvmTarget.memory_planning``).
        database: tuning records to apply first (:mod:`.tuning`).

    Returns:
        The module with every PrimFunc the rules match marked ``tirx.is_scheduled``.
    """
    import tvm
    from tvm import relax

    from . import arm_dsp, arm_dsp_im2col, arm_mve, int8_dot
    from .fused_schedules import check_fused_kernels_scheduled
    from .schedules import apply_default_cpu_schedules

    target = tvm.target.Target(tvm_target)
    mod = tuning_module(mod, tvm_target, micro_kernels, memory_first)
    if database is not None:
        before = _scheduled_kernels(mod)
        with target, database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        # How many kernels the database scheduled, for the manifest.
        mod = mod.with_attr("edgec.tuned_kernels", len(_scheduled_kernels(mod) - before))
    with target:
        mod = apply_default_cpu_schedules(target, micro_kernels, memory_first)(mod)
    check_fused_kernels_scheduled(mod)
    # Dot-product kernels (x86 vpmaddwd/vpdpbusd, AArch64 sdot/sadalp) read group-interleaved
    # weights, SMLAD kernels (Cortex-M4/M7) input-channel-innermost ones, the im2col and Helium
    # kernels theirs: re-lay out the constants (a no-op when no kernel was scheduled that way).
    mod = arm_mve.relayout_constant_weights(arm_dsp_im2col.relayout_constant_weights(mod))
    return arm_dsp.relayout_constant_weights(int8_dot.relayout_constant_weights(mod))


def micro_kernels_built(mod: tvm.IRModule) -> dict[str, int]:
    """How many kernels of a scheduled module each int8 micro-kernel computes (``{"vpdpbusd": 2}``),
    read from the instruction or weight layout the rules recorded, so the manifest shows what the CPU got and
    which kernels a rule declined (those are absent from the count)."""
    from . import arm_dsp, arm_dsp_im2col, arm_mve, int8_dot

    counts: dict[str, int] = {}
    for func in mod.functions.values():
        name = int8_dot.micro_kernel(func)
        if name is None and arm_mve.mve_weight_permutation(func):
            name = "vmladava"
        elif name is None and (arm_dsp.weight_permutation(func) or arm_dsp_im2col.im2col_weight(func)):
            name = "smlad"
        if name is None:
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
