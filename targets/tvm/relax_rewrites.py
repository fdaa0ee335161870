"""Relax-level rewrites that prepare a module for CPU lowering (:func:`.build.lower_for_cpu`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tvm

__all__ = [
    "clip_as_min_max",
    "constant_array",
    "fast_transcendentals",
    "fold_constants_with_numpy",
    "rewrite_functions",
]


def constant_array(expr: Any) -> np.ndarray | None:
    """The value of a Relax constant (``relax.const`` is an ``ir.GenericConst`` in TVM 0.27), else
    ``None``."""
    import tvm

    data = getattr(expr, "value", None)
    return data.numpy() if isinstance(data, tvm.runtime.Tensor) else None


def rewrite_functions(mod: tvm.IRModule, rewriter: Any) -> tvm.IRModule:
    """Every Relax function of ``mod`` through ``rewriter`` (a ``PyExprMutator`` made on ``mod``):
    the module of its builder, which also holds any kernel the rewriter emitted."""
    from tvm import relax

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def fold_constants_with_numpy() -> tvm.transform.Pass:
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
            return constant_array(expr)

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
        folded = rewrite_functions(mod, Folder(mod))
        return relax.transform.RemoveUnusedOutputs()(relax.transform.DeadCodeElimination()(folded))

    return fold


def clip_as_min_max() -> tvm.transform.Pass:
    """``clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)``, which layout conversion can see through.

    ``ConvertLayout`` knows no layout for ``relax.clip`` (the frontend's Clip, Relu6, HardSwish,
    HardSigmoid), so in an NHWC graph it wraps every clip in two transposes to NCHW and back: two
    extra passes over the tensor, and a kernel the conv epilogue cannot absorb. Broadcast
    ``maximum``/``minimum`` follow any layout.
    """
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, op: Any) -> Any:
            call = self.visit_expr_post_order(op)
            if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.clip":
                return call
            x, low, high = call.args
            dtype = x.ty.dtype
            bounded = self.builder_.emit(relax.op.maximum(x, relax.const(float(low.value), dtype)))
            return relax.op.minimum(bounded, relax.const(float(high.value), dtype))

    @tvm.transform.module_pass(opt_level=0, name="EdgecClipAsMinMax")
    def rewrite(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_functions(mod, Rewriter(mod))

    return rewrite


def fast_transcendentals() -> tvm.transform.Pass:
    """float32 ``sigmoid``, ``exp``, ``tanh``, ``erf`` and ``softmax`` as TVM's vectorisable
    polynomial forms (``topi.fast_exp``/``fast_tanh``/``fast_erf``/``nn.fast_softmax``; relative
    error ~1e-7, what onnxruntime's MLAS does too).

    LLVM has no vector ``exp``: a vectorised ``T.sigmoid`` epilogue became one libm ``expf`` call
    per lane, and YOLO's SiLU convs spent more time in their activation than in their MACs (the
    320x320 stem: 0.11 ms with ReLU, 1.5 ms with SiLU).
    """
    import tvm
    from tvm import relax, topi

    def sigmoid(x: Any) -> Any:
        one = tvm.tirx.const(1.0, x.dtype)
        return topi.divide(one, topi.add(one, topi.fast_exp(topi.negative(x))))

    forms = {"relax.sigmoid": sigmoid, "relax.exp": topi.fast_exp, "relax.tanh": topi.fast_tanh}
    forms["relax.erf"] = topi.fast_erf
    # TOPI's softmax with the polynomial exp (an attention row's exps were libm calls).
    forms["relax.nn.softmax"] = lambda x, axis: topi.nn.fast_softmax(x, axis)

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, op: Any) -> Any:
            call = self.visit_expr_post_order(op)
            if not isinstance(call.op, tvm.ir.Op) or call.op.name not in forms:
                return call
            (x,) = call.args
            if x.ty.dtype != "float32":  # the polynomials are float32 ones
                return call
            if call.op.name == "relax.nn.softmax":
                axis = int(call.attrs.axis) % len(x.ty.shape)
                return self.builder_.call_te(forms[call.op.name], x, axis, primfunc_name_hint="softmax")
            name = "fast_" + call.op.name.removeprefix("relax.")
            return self.builder_.call_te(forms[call.op.name], x, primfunc_name_hint=name)

    @tvm.transform.module_pass(opt_level=0, name="EdgecFastTranscendentals")
    def rewrite(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_functions(mod, Rewriter(mod))  # with the polynomial kernels

    return rewrite
