"""Fake quantization with a straight-through estimator and learned step sizes, as Relax kernels.

TVM 0.27 has no gradient for ``quantize``/``dequantize`` (and their int8 result cannot carry one),
so every ``dequantize(quantize(x, s, z), s, z)`` pair of an imported QDQ graph becomes one float
kernel with its own TE gradient (``call_tir_with_grad``):

    v = x / s        q = clamp(round(v) + z, low, high)        y = s * (q - z)

    dy/dx = 1 inside the range (round(v) + z in [low, high]), else 0          (straight-through)
    dy/ds = round(v) - v inside, (q - z) outside                              (LSQ, Esser et al. 2020)

Binary weights (``bits = 1``) are ``y = s * sign(x)`` (``+s`` at 0) with ``dy/dx = 1`` for
``|x| <= s`` and ``dy/ds = sign(x)``. Scales are per tensor or per channel along the quantize
``axis``; ``dy/ds`` is summed over the elements each scale covers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

GRADIENT_NAME = "edgec_fake_quant_grad"


@dataclass(frozen=True)
class FakeQuantSpec:
    """The integer grid of one fake-quantized tensor: ``[low, high]`` around ``zero``, or binary."""

    low: int
    high: int
    binary: bool = False

    @classmethod
    def for_bits(cls, bits: int) -> FakeQuantSpec:
        """Symmetric weights: ``[-(2^(b-1) - 1), 2^(b-1) - 1]``; 1 bit is binary (``±1``)."""
        if bits == 1:
            return cls(-1, 1, binary=True)
        limit = 2 ** (bits - 1) - 1
        return cls(-limit, limit)


def _scale_at(scale: Any, index: tuple, axis: int) -> Any:
    return scale() if len(scale.shape) == 0 else scale[index[axis]]


def fake_quant(x: Any, scale: Any, *, low: int, high: int, zero: int, axis: int, binary: bool) -> Any:
    """The TE forward kernel (see the module docstring)."""
    from tvm import te, tirx

    def compute(*index: Any) -> Any:
        s = _scale_at(scale, index, axis)
        value = x(*index)
        if binary:
            return tirx.Select(value >= 0, s, -s)
        q = tirx.max(tirx.min(tirx.round(value / s) + float(zero), float(high)), float(low))
        return (q - float(zero)) * s

    return te.compute(x.shape, compute, name="fake_quant")


def fake_quant_gradient(
    output_grad: Any, x: Any, scale: Any, *, low: int, high: int, zero: int, axis: int, binary: bool
) -> list[Any]:
    """The TE gradient kernels: ``[dL/dx, dL/ds]`` (see the module docstring)."""
    from tvm import te, tirx

    def parts(index: tuple) -> tuple[Any, Any]:
        s = _scale_at(scale, index, axis)
        value = x(*index)
        if binary:
            return tirx.abs(value) <= s, tirx.Select(value >= 0, tirx.const(1.0, "float32"), -1.0)
        v = value / s
        level = tirx.round(v) + float(zero)
        inside = tirx.all(level >= float(low), level <= float(high))
        clamped = tirx.max(tirx.min(level, float(high)), float(low)) - float(zero)
        return inside, tirx.Select(inside, tirx.round(v) - v, clamped)

    def x_grad(*index: Any) -> Any:
        inside, _ = parts(index)
        return tirx.Select(inside, output_grad(*index), tirx.const(0.0, "float32"))

    dx = te.compute(x.shape, x_grad, name="fake_quant_dx")
    rank = len(x.shape)
    if len(scale.shape) == 0:
        axes = [te.reduce_axis((0, x.shape[d]), name=f"r{d}") for d in range(rank)]
        ds = te.compute(
            (), lambda: te.sum(output_grad(*axes) * parts(tuple(axes))[1], axis=axes), name="fake_quant_ds"
        )
    else:
        others = {d: te.reduce_axis((0, x.shape[d]), name=f"r{d}") for d in range(rank) if d != axis}

        def scale_grad(channel: Any) -> Any:
            index = tuple(channel if d == axis else others[d] for d in range(rank))
            return te.sum(output_grad(*index) * parts(index)[1], axis=list(others.values()))

        ds = te.compute(scale.shape, scale_grad, name="fake_quant_ds")
    return [dx, ds]


@functools.cache
def register_fake_quant_gradient() -> None:
    """Registers :func:`fake_quant_gradient` under :data:`GRADIENT_NAME` (once per process)."""
    from tvm.relax.training.utils import register_te_gradient

    register_te_gradient(GRADIENT_NAME, fake_quant_gradient)


def insert_fake_quant(module: Any, function: str, specs: dict[str, FakeQuantSpec]) -> tuple[Any, int]:
    """Replaces every ``dequantize(quantize(x, s, z), s, z)`` of ``module[function]`` by the
    fake-quantization kernel; the grid of each pair comes from ``specs`` keyed by the name of its
    scale parameter (int8 ``[-128, 127]`` for scales not listed).

    Returns:
        The new module and the number of pairs replaced.
    """
    import tvm
    from tvm import relax

    quantize_op = tvm.ir.Op.get("relax.quantize")
    dequantize_op = tvm.ir.Op.get("relax.dequantize")

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.replaced = 0

        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            if call.op != dequantize_op:
                return call
            source = call.args[0]
            producer = self.lookup_binding(source) if isinstance(source, relax.Var) else None
            if producer is None or getattr(producer, "op", None) != quantize_op:
                return call
            x, scale, zero_point = producer.args
            if not scale.same_as(call.args[1]):
                return call
            if isinstance(zero_point, relax.Var):
                zero_point = self.lookup_binding(zero_point)
            # relax.const is an ir.GenericConst in TVM 0.27, its data under ``value``.
            data = getattr(zero_point, "value", None)
            if not isinstance(data, tvm.runtime.Tensor):
                return call  # a zero point computed at run time: not a fake quantization
            zeros = data.numpy().ravel()
            if zeros.size == 0 or not (zeros == zeros[0]).all():
                return call  # per-channel zero points: not a grid this kernel takes
            zero = int(zeros[0])
            spec = specs.get(scale.name if isinstance(scale, relax.Var) else "", FakeQuantSpec(-128, 127))
            options = {
                "low": spec.low,
                "high": spec.high,
                "zero": zero,
                "axis": int(producer.attrs.axis) % max(len(x.ty.shape), 1),
                "binary": spec.binary,
            }
            self.replaced += 1
            return self.builder_.call_te_with_grad(
                fake_quant,
                x,
                scale,
                te_grad_name=GRADIENT_NAME,
                te_grad_kwargs=options,
                primfunc_name_hint="fake_quant",
                **options,
            )

    rewriter = Rewriter(module)
    new_function = rewriter.visit_expr(module[function])
    updated = rewriter.builder_.get()
    updated[function] = relax.analysis.remove_all_unused(new_function)
    return updated, rewriter.replaced
