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

import numpy as np

from edgec.errors import EdgecError, ToolchainError

if TYPE_CHECKING:
    import tvm

__all__ = [
    "build_shared_library",
    "optimize_for_cpu",
]


def _fold_constants_with_numpy() -> tvm.transform.Pass:
    """Fold the weight arithmetic that layout conversion and BatchNorm decomposition create.

    Relax's ``FoldConstant`` compiles and runs one LLVM kernel per folded op (about 0.4 s each):
    40 of ResNet-50's 46 s compile went there, for HWIO transposes and BN scale/shift math that
    numpy does in microseconds. Ops not in the table are left for ``FoldConstant``.
    """
    import tvm
    from tvm import relax

    def axes(call: Any, name: str) -> list[int] | None:
        value = getattr(call.attrs, name, None)
        return None if value is None else [int(a) for a in value]

    def expand_dims(call: Any, x: np.ndarray) -> np.ndarray:
        return np.expand_dims(x, tuple(axes(call, "axis") or ()))

    table = {
        "relax.permute_dims": lambda call, x: np.transpose(x, axes(call, "axes")),
        "relax.expand_dims": expand_dims,
        "relax.add": lambda call, a, b: np.add(a, b),
        "relax.subtract": lambda call, a, b: np.subtract(a, b),
        "relax.multiply": lambda call, a, b: np.multiply(a, b),
        "relax.divide": lambda call, a, b: np.divide(a, b),
        "relax.sqrt": lambda call, x: np.sqrt(x),
        "relax.reshape": lambda call, x: x.reshape([int(d) for d in call.ty.shape]),
    }

    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        def constant_value(self, expr: Any) -> np.ndarray | None:
            if isinstance(expr, relax.Var):
                expr = self.lookup_binding(expr)
            data = getattr(expr, "value", None)  # relax.const is an ir.GenericConst in 0.27
            return data.numpy() if isinstance(data, tvm.runtime.Tensor) else None

        def visit_call_(self, op: Any) -> Any:
            call = self.visit_expr_post_order(op)
            if not isinstance(call.op, tvm.ir.Op) or call.op.name not in table:
                return call
            # reshape's second argument is a static ShapeExpr: the result type has the shape.
            args = call.args[:1] if call.op.name == "relax.reshape" else call.args
            values = [self.constant_value(arg) for arg in args]
            if any(v is None for v in values):
                return call
            expected = call.ty
            result = np.ascontiguousarray(table[call.op.name](call, *values))
            if str(result.dtype) != str(expected.dtype) or list(result.shape) != [
                int(d) for d in expected.shape
            ]:
                return call  # numpy promoted or broadcast differently: let TVM fold it
            # Without the dtype, relax.const narrows int64 to int32 (requantization constants).
            return relax.const(result, str(result.dtype))

    @tvm.transform.module_pass(opt_level=0, name="EdgecNumpyFoldConstant")
    def fold(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = Folder(mod).visit_expr(func)
        return relax.transform.RemoveUnusedOutputs()(relax.transform.DeadCodeElimination()(mod))

    return fold


def optimize_for_cpu(
    mod: tvm.IRModule, tvm_target: dict, micro_kernels: bool = True, memory_first: bool = False
) -> tvm.IRModule:
    """Lower a Relax module to scheduled TIR for a CPU, ready for ``tvm.compile``.

    Steps: decompose inference-only ops (BatchNorm becomes a scale and shift that fold into the
    conv epilogue), convert conv2d to NHWC/HWIO (the layout the conv schedule is written for;
    the weight transposes constant-fold), run the Relax ``zero`` pipeline (legalize, fold, fuse;
    each packed weight's unpack joins the kernel of its conv2d/matmul, :mod:`.weight_fusion`)
    under the target, then apply :mod:`.schedules`.

    Args:
        mod: A Relax module, e.g. from :func:`edgec.targets.tvm.frontend.import_onnx`.
        tvm_target: The TVM target as a JSON dict, e.g. ``{"kind": "llvm", "mcpu": "znver4"}``.
        micro_kernels: schedule int8 convolutions and matmuls with the CPU's micro-kernel
            (vpmaddwd, SMLAD) where it has one (``Target.micro_kernels``).
        memory_first: keep padded inputs and pre-pool tensors out of memory
            (:mod:`.fused_kernels`, :mod:`.fused_schedules`; ``TvmTarget.memory_planning``).

    Returns:
        The module with every PrimFunc the rules match marked ``tirx.is_scheduled``.
    """
    import tvm
    from tvm import relax

    from . import arm_dsp, x86_int8
    from .fused_kernels import outline_fused_kernels
    from .fused_schedules import check_fused_kernels_scheduled
    from .schedules import apply_default_cpu_schedules
    from .weight_fusion import zero_pipeline

    target = tvm.target.Target(tvm_target)
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = _fold_constants_with_numpy()(mod)
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
        mod = _fold_constants_with_numpy()(mod)
        # Fused conv + pool chains (named by the emission, see fused_kernels) as one function each.
        mod = outline_fused_kernels(mod)
        # Relax's zero pipeline plus the fusion of packed-weight decodes into their consumers.
        mod = zero_pipeline(memory_first)(mod)
        mod = apply_default_cpu_schedules(target, micro_kernels, memory_first)(mod)
    check_fused_kernels_scheduled(mod)
    # vpmaddwd kernels (x86 AVX2) read pair-interleaved weights, SMLAD kernels (Cortex-M4/M7)
    # input-channel-innermost ones: re-lay out the constants (a no-op when no kernel was
    # scheduled that way).
    return arm_dsp.relayout_constant_weights(x86_int8.relayout_constant_weights(mod))


def _fcompile(cc: str | None, cc_options: list[str] | None) -> Any:
    """The link step for ``export_library``: host gcc, or ``cc`` (a cross compiler)."""
    from tvm.support import cc as tvm_cc

    options = list(cc_options or [])
    if cc is None and not options:
        return tvm_cc.create_shared

    def create_shared(output: str, objects: list[str], options: list[str] | None = None) -> None:
        # export_library adds its own options (include paths for C modules); keep ours first.
        tvm_cc.create_shared(output, objects, options=extra + list(options or []), cc=compiler)

    compiler = cc or tvm_cc.get_cc() or "gcc"
    extra = options
    return create_shared


def build_shared_library(
    mod: tvm.IRModule,
    tvm_target: dict,
    out_path: pathlib.Path,
    *,
    cc: str | None = None,
    cc_options: list[str] | None = None,
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
            try:
                executable.export_library(
                    tmp_name, fcompile=_fcompile(cc, cc_options), workspace_dir=str(workspace)
                )
            except RuntimeError as err:
                raise ToolchainError(f"linking {out_path.name} failed: {err}") from err
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, out_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
