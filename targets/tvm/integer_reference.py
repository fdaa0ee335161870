"""A numpy executor of the integer plan of :mod:`edgec.targets.tvm.integer` (the test oracle).

It runs the same :class:`~edgec.targets.tvm.integer.QuantizedPlan` as the TVM lowering but writes
the requantization the way TFLite's ``MultiplyByQuantizedMultiplier`` does (sign-dependent nudge,
truncating 64-bit division, mask/threshold rounding shift), not in the shift-only form the kernels
use, so a bit-exact match also checks that the two forms are the same integer function.

Integer convolutions and matrix products are computed with float64 BLAS on integer-valued
operands: every product ``|x·w| ≤ 2^14`` and every sum of at most ``2^38 / 2^14`` of them is an
integer below ``2^53``, so float64 gives the exact int32 result (checked: ``|acc| < 2^31``).
No tvm import: this module only needs numpy and onnx.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from edgec.errors import EdgecError

from .integer import ADD_LEFT_SHIFT, INTEGER_DOMAIN, IntegerOp, QuantizedPlan, plan_quantized, pool_divisor

__all__ = ["multiply_by_quantized_multiplier", "reference_quantized"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: ``(a·b + nudge) / 2^31`` truncated,
    ``nudge = 2^30`` if ``a·b ≥ 0`` else ``1 - 2^30``; saturates only for ``a = b = INT32_MIN``."""
    ab = a.astype(np.int64) * b.astype(np.int64)
    v = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    q = np.where(v >= 0, v // (1 << 31), -((-v) // (1 << 31)))  # C++ division truncates toward 0
    return np.where((a == _INT32_MIN) & (b == _INT32_MIN), _INT32_MAX, q)


def _rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``(x >> e) + (remainder > threshold)``, with
    ``mask = 2^e - 1``, ``remainder = x & mask``, ``threshold = (mask >> 1) + (x < 0)``."""
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> exponent) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(
    x: np.ndarray, mult: np.ndarray, shift: np.ndarray, rounding: str = "single"
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(x, m, shift)``, vectorised.

    ``double`` (default build): ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x · 2^left, m),
    right)`` with ``left = max(shift, 0)``, ``right = max(-shift, 0)``; ``x · 2^left`` saturates to
    int32 (TFLite leaves the overflow undefined). ``single`` (``TFLITE_SINGLE_ROUNDING``):
    ``(x·m + 2^(total-1)) >> total`` with ``total = 31 - shift``.
    """
    shift = np.asarray(shift, np.int64)
    if rounding == "single":
        total = 31 - shift
        rounder = np.int64(1) << (total - 1)
        return (x.astype(np.int64) * np.asarray(mult, np.int64) + rounder) >> total
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = np.clip(x.astype(np.int64) * (np.int64(1) << left), _INT32_MIN, _INT32_MAX)
    return _rounding_divide_by_pot(_saturating_rounding_doubling_high_mul(scaled, np.asarray(mult)), right)


def _channel(values: Any, rank: int, axis: int) -> np.ndarray:
    values = np.asarray(values, np.int64)
    if values.size == 1:
        return values.reshape(-1)[0]
    if values.ndim == rank:
        return values
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


def _finish(acc: np.ndarray, p: dict[str, Any], axis: int, mult: Any = None, shift: Any = None) -> np.ndarray:
    mult = p["mult"] if mult is None else mult
    shift = p["shift"] if shift is None else shift
    r = multiply_by_quantized_multiplier(
        acc, _channel(mult, acc.ndim, axis), _channel(shift, acc.ndim, axis), p["rounding"]
    )
    return np.clip(r + p["zy"], p["lo"], p["hi"]).astype(np.int8)


def _pad(x: np.ndarray, pads: tuple[int, ...], value: int) -> np.ndarray:
    """NCHW spatial padding; ONNX ``pads`` order ``(top, left, bottom, right)``."""
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=value)


def _conv_sum(
    x: np.ndarray, w: np.ndarray, strides: tuple[int, ...], dilations: tuple[int, ...], group: int
) -> np.ndarray:
    """Exact integer NCHW/OIHW convolution (already padded) as int64, via float64 im2col."""
    n, c, _, _ = x.shape
    oc, icg, kh, kw = w.shape
    window = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    cols = sliding_window_view(x.astype(np.float64), window, axis=(2, 3))
    cols = cols[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    oh, ow = cols.shape[2], cols.shape[3]
    out = np.empty((n, oc, oh, ow), np.int64)
    ocg = oc // group
    for gi in range(group):
        xs = cols[:, gi * icg : (gi + 1) * icg]  # n, icg, oh, ow, kh, kw
        xs = xs.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, icg * kh * kw)
        ws = w[gi * ocg : (gi + 1) * ocg].reshape(ocg, -1).astype(np.float64)
        res = xs @ ws.T  # exact: integer values below 2^53
        out[:, gi * ocg : (gi + 1) * ocg] = res.reshape(n, oh, ow, ocg).transpose(0, 3, 1, 2).astype(np.int64)
    if c != icg * group:
        raise EdgecError(f"conv channel mismatch: input {c}, weight {icg} x {group} groups")
    return out


def _run_integer(op: IntegerOp, args: list[np.ndarray]) -> np.ndarray:
    p = op.params
    if op.kind == "quantize":
        scaled = np.rint(args[0].astype(np.float32) / np.float32(p["scale"])) + np.float32(p["zp"])
        return np.clip(scaled, -128, 127).astype(np.int8)
    if op.kind == "dequantize":
        return (args[0].astype(np.int32) - np.int32(p["zp"])).astype(np.float32) * np.float32(p["scale"])
    if op.kind == "conv":
        x = _pad(args[0], p["pads"], p["zx"])  # padding by z_x == real zero (no-op when z_x == 0)
        acc = _conv_sum(x, p["weight"], p["strides"], p["dilations"], p["group"])
        acc = acc + p["bias"].astype(np.int64).reshape(1, -1, 1, 1)
        _check_int32(acc, op)
        return _finish(acc, p, 1)
    if op.kind == "matmul":
        acc = np.rint(args[0].astype(np.float64) @ p["weight"].astype(np.float64)).astype(np.int64)
        acc = acc + p["bias"].astype(np.int64)
        _check_int32(acc, op)
        return _finish(acc, p, acc.ndim - 1)
    if op.kind == "add":
        it = iter(args)
        terms = []
        for const, z, m, s in (
            (p["consts"][0], p["za"], p["mult_a"], p["shift_a"]),
            (p["consts"][1], p["zb"], p["mult_b"], p["shift_b"]),
        ):
            q = const if const is not None else next(it)
            shifted = (q.astype(np.int64) - z) * (1 << ADD_LEFT_SHIFT)
            terms.append(
                multiply_by_quantized_multiplier(shifted, np.asarray(m), np.asarray(s), p["rounding"])
            )
        total = terms[0] + terms[1]
        return _finish(total, p, total.ndim - 1)
    if op.kind == "rescale":
        return _finish(args[0].astype(np.int64) - p["zx"], p, 0)
    if op.kind == "avgpool":
        x = args[0]
        window, counts, mult, shift = pool_divisor(p, x.shape)
        if p["global"]:
            total = x.astype(np.int64).sum(axis=(2, 3), keepdims=True)
        else:
            padded = _pad(x, p["pads"], p["zx"])
            ones = np.ones((x.shape[1], 1, *p["kernel"]), np.int8)
            total = _conv_sum(padded, ones, p["strides"], (1, 1), x.shape[1])
        acc = total - window * p["zx"]
        if not p["divide"]:
            return _finish(acc, p, 1, mult, shift)
        # TFLite: acc > 0 ? (acc + N/2) / N : (acc - N/2) / N, with C division (toward zero)
        half = counts // 2
        up = acc + half
        down = acc - half
        quotient = np.where(acc > 0, up // counts, -((-down) // counts))
        return np.clip(quotient + p["zy"], p["lo"], p["hi"]).astype(np.int8)
    raise EdgecError(f"the reference has no integer op '{op.kind}' ({op.name})")


def _check_int32(acc: np.ndarray, op: IntegerOp) -> None:
    if acc.size and (acc.min() < _INT32_MIN or acc.max() > _INT32_MAX):
        raise EdgecError(f"{op.name}: the int32 accumulator overflows")


def _max_pool(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    kernel = tuple(attrs["kernel_shape"])
    strides = tuple(attrs.get("strides", (1,) * len(kernel)))
    pads = tuple(attrs.get("pads", (0,) * 2 * len(kernel)))
    if len(kernel) != 2 or tuple(attrs.get("dilations", (1, 1))) != (1, 1):
        raise EdgecError("the reference MaxPool supports 2-D, undilated pools only")
    lo = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
    h, w = x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3]
    extra = [0, 0]
    if attrs.get("ceil_mode", 0):
        for i, (size, k, s) in enumerate(((h, kernel[0], strides[0]), (w, kernel[1], strides[1]))):
            out = -(-(size - k) // s) + 1
            if (out - 1) * s >= size - pads[i]:  # ONNX: the last window must start inside
                out -= 1
            extra[i] = max(0, (out - 1) * s + k - size)
    padded = np.pad(
        x, ((0, 0), (0, 0), (pads[0], pads[2] + extra[0]), (pads[1], pads[3] + extra[1])), constant_values=lo
    )
    windows = sliding_window_view(padded, kernel, axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    return windows.max(axis=(4, 5))


def _run_onnx_node(
    node: onnx.NodeProto, args: list[np.ndarray | None], consts: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """The int8 data-movement ops and constants (numpy)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Constant":
        return [numpy_helper.to_array(node.attribute[0].t)]
    x = args[0]
    if op == "MaxPool":
        return [_max_pool(x, attrs)]
    if op == "Reshape":
        shape = [int(d) for d in args[1]]
        if not attrs.get("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return [x.reshape(shape)]
    if op == "Flatten":
        axis = attrs.get("axis", 1) % max(x.ndim, 1)
        return [x.reshape(int(np.prod(x.shape[:axis])), -1)]
    if op == "Transpose":
        return [x.transpose(attrs.get("perm"))]
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(a) for a in args[1]]
        if op == "Squeeze":
            return [np.squeeze(x, axis=tuple(axes) if axes is not None else None)]
        out = x
        for a in sorted(a % (x.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Concat":
        return [np.concatenate([a for a in args if a is not None], axis=attrs["axis"])]
    if op == "Identity":
        return [x]
    if op == "DequantizeLinear" and node.input[0] in consts:
        scale = args[1].astype(np.float32)
        zp = args[2].astype(np.int64) if len(args) > 2 and args[2] is not None else np.zeros_like(scale)
        axis = attrs.get("axis", 1)
        if scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return [((x.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)]
    return _run_float_node(node, args)


def _run_float_node(node: onnx.NodeProto, args: list[np.ndarray | None]) -> list[np.ndarray]:
    """A node of the float remainder (e.g. a final Softmax), run alone in onnxruntime."""
    import onnxruntime as ort

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(args)]
    single = onnx.NodeProto()
    single.CopyFrom(node)
    del single.input[:]
    single.input.extend(names)
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, args, strict=True)
        if a is not None
    ]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output]
    model = helper.make_model(
        helper.make_graph([single], "float_node", inputs, outputs),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {n: a for n, a in zip(names, args, strict=True) if a is not None})
    except (RuntimeError, ValueError) as err:  # onnxruntime's Fail/InvalidArgument derive from these
        raise EdgecError(
            f"the reference could not run float node {node.op_type} '{node.name}': {err}"
        ) from err


def reference_quantized(
    model: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    plan: QuantizedPlan | None = None,
    keep_all: bool = False,
) -> dict[str, np.ndarray]:
    """Run the integer plan of a QDQ model in numpy, with the same arithmetic as the TVM kernels.

    Args:
        model: The QDQ model (ignored when ``plan`` is given, except that it must be the same).
        inputs: Graph inputs by name.
        plan: A plan from :func:`~edgec.targets.tvm.integer.plan_quantized` (made if ``None``).
        keep_all: Return every tensor (int8 intermediates included), not just the graph outputs.

    Returns:
        The graph outputs by name (or all tensors).
    """
    plan = plan or plan_quantized(model)
    graph = plan.model.graph
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = dict(values)
    for value in graph.input:
        if value.name in values:
            continue
        if value.name not in inputs:
            raise EdgecError(f"missing input '{value.name}'")
        values[value.name] = np.asarray(inputs[value.name])
    for node in graph.node:
        args = [values[i] if i else None for i in node.input]
        if node.domain == INTEGER_DOMAIN:
            index = next(a.i for a in node.attribute if a.name == "index")
            results = [_run_integer(plan.ops[index], [a for a in args if a is not None])]
        else:
            results = _run_onnx_node(node, args, consts)
        for name, value in zip(node.output, results, strict=False):
            values[name] = value
            if node.op_type == "Constant":
                consts[name] = value
    if keep_all:
        return values
    return {o.name: values[o.name] for o in graph.output}
