"""Gradients that TVM 0.27's ``relax.training`` lacks, and a faster one for conv2d.

Registered once per process as ``FPrimalGradient`` attributes of Relax ops (what the ``Gradient``
pass reads). TVM ships none for ``flatten``, ``squeeze``, ``clip``, ``max``,
``adaptive_avg_pool2d``, ``gelu`` and ``gelu_tanh``; the forms here are the textbook derivatives.

conv2d: TVM's own gradient computes the input gradient with ``conv2d_transpose`` and the weight
gradient with a ``CNHW``/``IOHW`` conv2d, neither of which edgec's CPU schedules cover (115 ms per
training step of the digits CNN at batch 32, against 31 ms for the untuned defaults). For stride 1,
dilation 1 and one group it is re-expressed with NHWC/HWIO conv2d, the layout of edgec's register
-tiled schedule (``targets/tvm/schedules.py``), for forward convolutions in NCHW or NHWC:

    dx = conv2d_nhwc(dy, flip_hw(W) as [kh, kw, O, C], padding k - 1 - p)
    dW = conv2d_nhwc(x as [C, H, W, N], dy as [Ho, Wo, N, O], padding p)  (then [kh, kw, C, O])

Any other conv2d keeps TVM's gradient.
"""

from __future__ import annotations

import functools
import math
from typing import Any

# Above TVM's own registrations (level 10), so that conv2d's is replaced.
_LEVEL = 11


def _shape(expr: Any) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def _dtype(expr: Any) -> str:
    dtype = expr.ty.dtype
    return str(getattr(dtype, "dtype", dtype))


def _conv2d_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    from tvm.relax.op import _op_gradient, flip, permute_dims
    from tvm.relax.op.nn import conv2d

    attrs = orig_call.attrs
    data, weight = orig_call.args
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
    nchw = layouts == ("NCHW", "OIHW", "NCHW")
    kernel_h, kernel_w = _shape(weight)[2:] if nchw else _shape(weight)[:2]
    pads = [int(p) for p in attrs.padding]
    plain = (
        layouts in (("NCHW", "OIHW", "NCHW"), ("NHWC", "HWIO", "NHWC"))
        and int(attrs.groups) == 1
        and all(int(s) == 1 for s in attrs.strides)
        and all(int(d) == 1 for d in attrs.dilation)
        and max(pads[0], pads[2]) <= kernel_h - 1
        and max(pads[1], pads[3]) <= kernel_w - 1
    )
    if not plain and layouts == ("NHWC", "HWIO", "NHWC"):
        return _nhwc_through_nchw(orig_var, orig_call, output_grad, ctx)
    if not plain:
        return _op_gradient.conv2d_grad(orig_var, orig_call, output_grad, ctx)
    nhwc = {"data_layout": "NHWC", "kernel_layout": "HWIO", "out_layout": "NHWC"}
    nhwc["out_dtype"] = attrs.out_dtype
    # Everything in NHWC/HWIO: x [N, H, W, C], W [kh, kw, C, O], dy [N, Ho, Wo, O].
    x = permute_dims(data, [0, 2, 3, 1]) if nchw else data
    w = permute_dims(weight, [2, 3, 1, 0]) if nchw else weight
    dy = permute_dims(output_grad, [0, 2, 3, 1]) if nchw else output_grad
    flipped = permute_dims(flip(flip(w, 0), 1), [0, 1, 3, 2])
    kernel = [kernel_h, kernel_w, kernel_h, kernel_w]
    transposed_pads = [k - 1 - p for k, p in zip(kernel, pads, strict=True)]
    data_grad = conv2d(dy, flipped, padding=transposed_pads, **nhwc)
    # [C, kh, kw, O]: the batch is the reduction (input channels of this convolution).
    weight_grad = conv2d(permute_dims(x, [3, 1, 2, 0]), permute_dims(dy, [1, 2, 0, 3]), padding=pads, **nhwc)
    if nchw:
        return [permute_dims(data_grad, [0, 3, 1, 2]), permute_dims(weight_grad, [3, 0, 1, 2])]
    return [data_grad, permute_dims(weight_grad, [1, 2, 0, 3])]


def _nhwc_through_nchw(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """TVM's NCHW/OIHW gradient for an NHWC/HWIO conv2d it cannot take (strided, grouped):
    the call restated in NCHW, its gradients permuted back."""
    from tvm.relax.op import _op_gradient, permute_dims
    from tvm.relax.op.nn import conv2d

    attrs = orig_call.attrs
    data, weight = (
        ctx.normalize(permute_dims(t, axes))
        for t, axes in zip(orig_call.args, ([0, 3, 1, 2], [3, 2, 0, 1]), strict=True)
    )
    call = ctx.normalize(
        conv2d(
            data,
            weight,
            attrs.strides,
            attrs.padding,
            attrs.dilation,
            attrs.groups,
            out_dtype=attrs.out_dtype,
        )
    )
    result = ctx.normalize(permute_dims(orig_var, [0, 3, 1, 2]))
    data_grad, weight_grad = _op_gradient.conv2d_grad(
        result, call, permute_dims(output_grad, [0, 3, 1, 2]), ctx
    )
    return [permute_dims(data_grad, [0, 2, 3, 1]), permute_dims(weight_grad, [2, 3, 1, 0])]


def _max_pool2d_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """Non-overlapping NCHW or NHWC windows (pool = stride, no padding): ``dy`` spread over the window's
    maxima (shared by ties). Elementwise ops that fuse, where TVM's ``max_pool2d_backward`` is one
    scatter kernel that edgec's schedules cannot speed up (0.6 of the 2.7 ms digits step)."""
    from tvm import relax
    from tvm.relax.op import _op_gradient, astype, divide, equal, multiply, repeat
    from tvm.relax.op.nn import avg_pool2d

    attrs = orig_call.attrs
    x = orig_call.args[0]
    pool = [int(p) for p in attrs.pool_size]
    axes = {"NCHW": (2, 3), "NHWC": (1, 2)}.get(attrs.layout)
    if axes is None or attrs.out_layout != attrs.layout:
        return _op_gradient.max_pool2d_grad(orig_var, orig_call, output_grad, ctx)
    height, width = (_shape(x)[a] for a in axes)
    simple = (
        [int(s) for s in attrs.strides] == pool
        and all(int(p) == 0 for p in attrs.padding)
        and all(int(d) == 1 for d in attrs.dilation)
        and height % pool[0] == 0
        and width % pool[1] == 0
    )
    if not simple:
        return _op_gradient.max_pool2d_grad(orig_var, orig_call, output_grad, ctx)

    def spread(tensor: Any) -> Any:
        return repeat(repeat(tensor, pool[0], axis=axes[0]), pool[1], axis=axes[1])

    dtype = _dtype(x)
    hit = astype(equal(x, spread(orig_var)), dtype)
    window = avg_pool2d(hit, pool, pool, layout=attrs.layout)
    ties = multiply(window, relax.const(float(pool[0] * pool[1]), dtype))
    return [multiply(hit, divide(spread(output_grad), spread(ties)))]


def _reshape_back(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """flatten / squeeze: the gradient is the output gradient in the input's shape."""
    from tvm.relax.op import reshape

    return [reshape(output_grad, _shape(orig_call.args[0]))]


def _clip_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """``dy`` where ``min <= x <= max``, else 0 (``clip(x, min, max)``)."""
    from tvm import relax
    from tvm.relax.op import greater, less, logical_or, where
    from tvm.relax.op.grad import no_grad

    x, low, high = orig_call.args
    dtype = _dtype(x)
    outside = logical_or(
        less(x, relax.const(float(low.value), dtype)), greater(x, relax.const(float(high.value), dtype))
    )
    return [where(outside, relax.const(0.0, dtype), output_grad), no_grad(low), no_grad(high)]


def _max_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """``dy`` at the elements equal to the maximum (shared by ties), else 0."""
    from tvm import relax
    from tvm.relax.op import broadcast_to, equal, reshape, where

    x = orig_call.args[0]
    shape = _shape(x)
    axes = orig_call.attrs.axis
    reduced = range(len(shape)) if axes is None else [int(a) % len(shape) for a in axes]
    kept = [1 if i in reduced else d for i, d in enumerate(shape)]
    maximum = broadcast_to(reshape(orig_var, kept), shape)
    grad = broadcast_to(reshape(output_grad, kept), shape)
    return [where(equal(x, maximum), grad, relax.const(0.0, _dtype(x)))]


def _adaptive_avg_pool2d_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """NCHW with an output size dividing the input: each input gets ``dy / (kh * kw)`` of its window."""
    from tvm import relax
    from tvm.relax.op import divide, repeat

    x = orig_call.args[0]
    if orig_call.attrs.layout != "NCHW":
        raise ValueError("edgec: adaptive_avg_pool2d's gradient needs the NCHW layout")
    height, width = _shape(x)[2:]
    out_h, out_w = _shape(orig_var)[2:]
    if height % out_h or width % out_w:
        raise ValueError("edgec: adaptive_avg_pool2d's gradient needs an output size dividing the input")
    kh, kw = height // out_h, width // out_w
    spread = repeat(repeat(output_grad, kh, axis=2), kw, axis=3)
    return [divide(spread, relax.const(float(kh * kw), _dtype(x)))]


def _gelu_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """``d/dx x Phi(x) = Phi(x) + x phi(x)`` with ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``."""
    from tvm import relax
    from tvm.relax.op import add, erf, exp, multiply

    x = orig_call.args[0]
    dtype = _dtype(x)

    def const(value: float) -> Any:
        return relax.const(value, dtype)

    cdf = multiply(const(0.5), add(const(1.0), erf(multiply(x, const(1 / math.sqrt(2))))))
    pdf = multiply(const(1 / math.sqrt(2 * math.pi)), exp(multiply(const(-0.5), multiply(x, x))))
    return [multiply(output_grad, add(cdf, multiply(x, pdf)))]


def _gelu_tanh_grad(orig_var: Any, orig_call: Any, output_grad: Any, ctx: Any) -> list[Any]:
    """``y = x (1 + t) / 2`` with ``t = tanh(c (x + 0.044715 x^3))``:
    ``dy/dx = (1 + t) / 2 + x (1 - t^2) c (1 + 3 * 0.044715 x^2) / 2``."""
    from tvm import relax
    from tvm.relax.op import add, multiply, subtract, tanh

    x = orig_call.args[0]
    dtype = _dtype(x)

    def const(value: float) -> Any:
        return relax.const(value, dtype)

    c = math.sqrt(2 / math.pi)
    square = multiply(x, x)
    t = tanh(multiply(const(c), add(x, multiply(const(0.044715), multiply(square, x)))))
    du = multiply(const(c), add(const(1.0), multiply(const(3 * 0.044715), square)))
    slope = add(
        multiply(const(0.5), add(const(1.0), t)),
        multiply(multiply(const(0.5), x), multiply(subtract(const(1.0), multiply(t, t)), du)),
    )
    return [multiply(output_grad, slope)]


GRADIENTS = {
    "relax.nn.conv2d": _conv2d_grad,
    "relax.nn.max_pool2d": _max_pool2d_grad,
    "relax.flatten": _reshape_back,
    "relax.squeeze": _reshape_back,
    "relax.clip": _clip_grad,
    "relax.max": _max_grad,
    "relax.nn.adaptive_avg_pool2d": _adaptive_avg_pool2d_grad,
    "relax.nn.gelu": _gelu_grad,
    "relax.nn.gelu_tanh": _gelu_tanh_grad,
}


@functools.cache
def register_gradients() -> None:
    """Registers :data:`GRADIENTS` (once per process) and the fake-quantization gradient."""
    from tvm.relax.op.base import register_gradient

    from edgec.train.fake_quant import register_fake_quant_gradient

    for op_name, gradient in GRADIENTS.items():
        register_gradient(op_name, gradient, level=_LEVEL)
    register_fake_quant_gradient()


def missing_gradients(function: Any, params: list[Any]) -> list[str]:
    """Relax ops of ``function`` on a path from ``params`` that have no gradient (sorted, unique).

    Ops on constants only (shape arithmetic) need none, so they are not reported.
    """
    import tvm
    from tvm import relax

    depends = set(params)
    missing: set[str] = set()

    def uses_param(expr: Any) -> bool:
        found = False

        def visit(node: Any) -> None:
            nonlocal found
            if isinstance(node, relax.Var) and node in depends:
                found = True

        relax.analysis.post_order_visit(expr, visit)
        return found

    for block in function.body.blocks:
        for binding in block.bindings:
            if not uses_param(binding.value):
                continue
            depends.add(binding.var)
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                # call_tir_with_grad carries its own (TE) gradient: fake quantization.
                has_own = value.op.name == "relax.call_tir_with_grad"
                if not has_own and value.op.get_attr("FPrimalGradient") is None:
                    missing.add(value.op.name)
    return sorted(missing)
