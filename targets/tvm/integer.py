"""Integer lowering of QDQ ONNX models: int8 kernels in Relax, TFLite/CMSIS-NN requantization.

The relax ONNX frontend imports ``QuantizeLinear``/``DequantizeLinear`` as float ops, so a QDQ model
imported as is computes in float. This module recognises the quantized groups of a standard QDQ
graph (as written by ``passes/quantization`` or onnxruntime's ``quantize_static``) and lowers each
to integer arithmetic:

``DQ(x_q) , DQ(w_q) [, DQ(b_q)] → Conv | Gemm | MatMul [→ Relu | Clip] → Q``  becomes::

    acc[c]  = Σ x_q · w_q[c]  +  (b_q[c] - z_x · Σ w_q[c])          int8xint8 → int32, padding = z_x
    y_q     = clamp(z_y + requantize(acc[c], M[c]), lo, hi)          int8,  M[c] = s_x · s_w[c] / s_y

(weights symmetric, ``z_w = 0``; the input zero-point term is folded into the bias, and spatial
padding is done explicitly with the value ``z_x``, which is what real zero quantizes to; ``lo``/``hi``
are ``[-128, 127]`` narrowed by a fused ``Relu`` to ``z_y`` or by ``Clip(a, b)`` to
``z_y + rint(a / s_y)``, ``z_y + rint(b / s_y)``). Also ``Add``/two-input ``Sum`` (TFLite's
rescaled add), ``GlobalAveragePool``/``AveragePool`` (int32 window sum, then TFLite's rounding
division or one requantization), ``MaxPool``/``Reshape``/``Flatten``/``Transpose``/``Squeeze``/
``Unsqueeze``/``Concat`` directly on int8 (plus a requantization when input and output parameters
differ), ``DQ → [Relu|Clip] → Q`` as a requantization with a clamp. Only the graph's own
``QuantizeLinear`` of a float tensor (``clamp(rint(x / s) + z)``, ties to even as ONNX) and
``DequantizeLinear`` of an int8 tensor that a float consumer or a graph output needs
(``(q - z) · s``) remain float; everything between them is integer. Groups that do not fit (uint8
or per-channel activations, asymmetric weights, ops without an integer form such as Softmax or
LRN) stay float, and :attr:`QuantizedPlan.float_nodes` says which and why.

Requantization (:func:`quantize_multiplier`, :func:`requantize`) has two forms. ``rounding="double"``
is TFLite's ``MultiplyByQuantizedMultiplier`` (the default build of TFLite Micro and CMSIS-NN)::

    M = q · 2^e, q ∈ [0.5, 1)  (frexp);  m = round(q · 2^31)  (if m = 2^31: m = 2^30, e += 1)
    left = max(e, 0), right = max(-e, 0)
    x'   = saturate_int32(x · 2^left)
    h    = SaturatingRoundingDoublingHighMul(x', m)  =  (x' · m + 2^30) >> 31         (int64, floor)
    r    = RoundingDivideByPOT(h, right)             =  (h + 2^(right-1) - [h < 0]) >> right   (right > 0)

``h`` rounds ``x'·m / 2^31`` to nearest with ties toward +∞ (TFLite writes it with a sign-dependent
nudge and a truncating division, which is the same integer), and ``r`` rounds ``h / 2^right`` to
nearest with ties away from zero. ``rounding="single"``, edgec's default (``Target.requantize_rounding``,
``edgec compile --rounding``), is TFLite's ``TFLITE_SINGLE_ROUNDING`` (CMSIS-NN's
``CMSIS_NN_USE_SINGLE_ROUNDING``) form, ``r = (x · m + 2^(30-e)) >> (31 - e)``: one rounding, ties
toward +∞, closer to exact (see :func:`requantize`); the first rounding of the double form is off
by one step on ~0.06 % of values and that compounds over deep networks (resnet50, inception_v1 in
``tests/targets/test_integer.py``). The numpy reference
(:mod:`.integer_reference`) implements the TFLite formulas literally (nudge, truncating division,
mask and threshold) so that the bit-exact test also checks these identities.

Design: edgec does the pattern recognition on the ONNX graph (:func:`plan_quantized`), where the
QDQ structure is explicit and the scales are constants, computes every integer parameter there in
numpy, and replaces each group by one ``EdgecInteger`` node (domain ``edgec``) that indexes a
:class:`IntegerOp`. The Relax module is then built by the TVM frontend's own importer, subclassed
so that ``EdgecInteger`` nodes are emitted by :func:`_emit` and every other node (the float
remainder, and the int8 pass-through ops, which are dtype-agnostic) goes through TVM's converters.
``from_onnx`` has no public hook for custom converters; the subclass overrides two methods of
``ONNXGraphImporter`` (``_check_for_unsupported_ops``, ``_convert_operator``), the narrowest
surface that keeps initializers, graph inputs/outputs, shape handling and ``If`` in TVM's hands.
The same plan drives the numpy reference, so the two executors cannot disagree about parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.errors import EdgecError

if TYPE_CHECKING:
    import tvm

__all__ = [
    "INTEGER_OP",
    "IntegerOp",
    "QuantizedPlan",
    "has_qdq",
    "lower_onnx",
    "lower_quantized",
    "plan_quantized",
    "pool_divisor",
    "quantize_multiplier",
    "requantize",
]

INTEGER_OP = "EdgecInteger"
INTEGER_DOMAIN = "edgec"

# TFLite's left shift for the inputs of a quantized Add (int8): headroom for the rescaled sum.
ADD_LEFT_SHIFT = 20

_INT8_MIN, _INT8_MAX = -128, 127
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

# Ops that move or select int8 values without arithmetic: run on int8 when input and output
# quantization parameters agree (else followed by a requantization).
_PASS_THROUGH = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})
_ACTIVATIONS = frozenset({"Relu", "Clip"})


# --------------------------------------------------------------------------------------------
# Fixed-point arithmetic
# --------------------------------------------------------------------------------------------


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``QuantizeMultiplier``: a real multiplier as an int32 mantissa and a power of two.

    ``real = m · 2^(shift - 31)`` with ``m = round(q · 2^31)`` for ``real = q · 2^shift``,
    ``q ∈ [0.5, 1)`` (``math.frexp``); ``round`` is half away from zero (C ``std::round``); when
    rounding gives ``2^31``, ``m = 2^30`` and ``shift + 1``. A zero multiplier gives ``m = 0``.
    Shifts below -31 flush the multiplier to zero, as in TFLite.

    Args:
        real: One non-negative multiplier or an array of them (computed in float64).

    Returns:
        ``(m, shift)`` as int64 arrays of the same shape as ``real``.
    """
    values = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise EdgecError(f"requantization multipliers must be finite and non-negative, got {values}")
    mult = np.zeros(values.shape, np.int64)
    shift = np.zeros(values.shape, np.int64)
    for i, value in np.ndenumerate(values):
        if value == 0.0:
            continue
        q, e = math.frexp(float(value))
        m = math.floor(q * 2**31 + 0.5)  # q > 0: half away from zero (C std::round)
        if m == 2**31:
            m //= 2
            e += 1
        if e < -31:
            m, e = 0, 0
        if e > 30:
            raise EdgecError(f"requantization multiplier {value} is too large for int32 fixed point")
        mult[i], shift[i] = m, e
    shape = np.shape(real)
    return mult.reshape(shape), shift.reshape(shape)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, rounding: str = "single") -> np.ndarray:
    """``MultiplyByQuantizedMultiplier(acc, m, shift)`` in the shift-only form used by the kernels.

    ``double`` (TFLite's default): ``x' = saturate_int32(acc · 2^max(shift,0))``,
    ``h = (x'·m + 2^30) >> 31``, ``r = (h + 2^(right-1) - [h<0]) >> right`` with
    ``right = max(-shift, 0)`` (``r = h`` when ``right = 0``). ``single`` (``TFLITE_SINGLE_ROUNDING``,
    CMSIS-NN ``CMSIS_NN_USE_SINGLE_ROUNDING``, edgec's default): ``r = (acc·m + 2^(30-shift)) >>
    (31 - shift)``, one rounding, ties toward +∞. All shifts are arithmetic (floor); ``mult`` and
    ``shift`` broadcast.

    Args:
        acc: int32 accumulators (any integer dtype; computed in int64).
        mult: int32 mantissas from :func:`quantize_multiplier`.
        shift: Their exponents.
        rounding: ``double`` or ``single``.

    Returns:
        The rounded products as int64 (callers add the zero point and clamp).
    """
    x = acc.astype(np.int64)
    mult = np.asarray(mult, np.int64)
    shift = np.asarray(shift, np.int64)
    if rounding == "single":
        total = 31 - shift
        return (x * mult + (np.int64(1) << (total - 1))) >> total
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.clip(x << left, _INT32_MIN, _INT32_MAX)
    h = (x * mult + (1 << 30)) >> 31
    nudge = (np.int64(1) << right) >> 1
    neg = ((h < 0) & (right > 0)).astype(np.int64)
    return (h + nudge - neg) >> right


# --------------------------------------------------------------------------------------------
# The plan: QDQ groups → integer ops
# --------------------------------------------------------------------------------------------


@dataclass
class IntegerOp:
    """One integer kernel of a quantized plan.

    ``kind`` is one of:

    * ``quantize`` — float → int8: ``clamp(rint(x / s) + z)``, ``rint`` half to even (as ONNX).
    * ``dequantize`` — int8 → float32: ``(q - z) · s``.
    * ``conv`` / ``matmul`` — ``clamp(z_y + requantize(Σ x·w + bias, m[c], shift[c]), lo, hi)``
      with ``bias = b - z_x·Σw[c]`` and spatial padding by ``z_x``.
    * ``add`` — TFLite's int8 add: ``a' = requantize((q_a - z_a) << 20, m_a, sh_a)``, same for ``b``,
      ``y = clamp(z_y + requantize(a' + b', m_y, sh_y), lo, hi)``.
    * ``avgpool`` — ``acc = Σ_window q - K·z_x`` (padding by ``z_x``, ``K`` the window size), then
      ``clamp(z_y + round_half_away(acc / N), lo, hi)`` when input and output parameters agree
      (TFLite's integer average pool) or ``clamp(z_y + requantize(acc, m, sh), lo, hi)`` with
      ``M = s_x / (s_y · N)``; ``N`` is the divisor (per output position when padding is excluded,
      see :func:`pool_divisor`); ``global`` sums over H, W.
    * ``rescale`` — ``clamp(z_y + requantize(q - z_x, m, sh), lo, hi)``, ``M = s_x / s_y``.

    Attributes:
        kind: See above.
        name: The ONNX node this op replaces (for messages).
        inputs: Input tensor names (int8, or float for ``quantize``).
        output: Output tensor name.
        params: numpy arrays and Python numbers, per kind.
    """

    kind: str
    name: str
    inputs: list[str]
    output: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantizedPlan:
    """A QDQ model rewritten for integer execution.

    Attributes:
        model: The rewritten ONNX model: ``EdgecInteger`` nodes (attribute ``index`` into ``ops``),
            int8 pass-through nodes, and whatever float nodes remain.
        ops: The integer ops.
        float_nodes: Names of nodes that remain float arithmetic (the float remainder), each
            with the reason it was not lowered to integers.
    """

    model: onnx.ModelProto
    ops: list[IntegerOp]
    float_nodes: list[tuple[str, str]]


@dataclass(frozen=True)
class _QParams:
    scale: np.ndarray  # float32, scalar or per-channel
    zero_point: np.ndarray  # int
    axis: int
    dtype: np.dtype


class _Refuse(Exception):
    """A group that cannot be lowered to integers (stays float); the message says why."""


def has_qdq(model: onnx.ModelProto) -> bool:
    """True if the graph contains QuantizeLinear or DequantizeLinear nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _label(node: onnx.NodeProto) -> str:
    return node.name or (f"<{node.op_type} -> {node.output[0]}>" if node.output else f"<{node.op_type}>")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """Indexes of a QDQ graph: constants, producers, consumers, quantization parameters."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer
        }
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                attr = node.attribute[0]
                if attr.name == "value":
                    self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_float", "value_int"):
                    self.consts[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.graph_outputs = {o.name for o in model.graph.output}

    def only_consumer(self, tensor: str, node: onnx.NodeProto) -> bool:
        users = self.consumers.get(tensor, [])
        return tensor not in self.graph_outputs and len(users) == 1 and users[0] is node

    def qparams(self, node: onnx.NodeProto) -> _QParams:
        """Scale/zero point of a QuantizeLinear or DequantizeLinear node (constants only)."""
        if len(node.input) < 2 or node.input[1] not in self.consts:
            raise _Refuse(f"{_label(node)} has a non-constant scale")
        scale = self.consts[node.input[1]].astype(np.float32)
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.consts:
                raise _Refuse(f"{_label(node)} has a non-constant zero point")
            zp = self.consts[node.input[2]]
        else:
            zp = np.zeros(scale.shape, np.uint8)  # ONNX default: uint8 zero point 0
        attrs = _attrs(node)
        if attrs.get("block_size", 0):
            raise _Refuse(f"{_label(node)} uses blocked quantization")
        if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
            raise _Refuse(f"{_label(node)} has a non-positive or non-finite scale")
        return _QParams(scale, zp.astype(np.int64), int(attrs.get("axis", 1)), zp.dtype)

    def activation(self, tensor: str) -> tuple[str, float, int]:
        """``(int8 tensor, scale, zero point)`` for a float tensor made by DQ of a non-constant int8."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise _Refuse(f"input '{tensor}' is not the output of a DequantizeLinear")
        if dq.input[0] in self.consts:
            raise _Refuse(f"input '{tensor}' is a constant, not an activation")
        qp = self.qparams(dq)
        if qp.scale.size != 1:
            raise _Refuse(f"activation '{tensor}' is quantized per channel; only per-tensor is lowered")
        if qp.dtype != np.int8:
            raise _Refuse(f"activation '{tensor}' is {qp.dtype}; only int8 activations are lowered")
        return dq.input[0], float(qp.scale.reshape(())), int(qp.zero_point.reshape(()))

    def weight(self, tensor: str) -> tuple[np.ndarray, np.ndarray, int]:
        """``(int8 weights, per-channel scales (or one), axis)`` for DQ of a constant int8."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.consts:
            raise _Refuse(f"weight '{tensor}' is not a DequantizeLinear of a constant")
        qp = self.qparams(dq)
        w = self.consts[dq.input[0]]
        if w.dtype != np.int8:
            raise _Refuse(f"weight '{tensor}' is {w.dtype}; only int8 weights are lowered")
        if np.any(qp.zero_point != 0):
            raise _Refuse(f"weight '{tensor}' has a non-zero zero point (only symmetric weights)")
        axis = qp.axis % w.ndim if qp.scale.size > 1 else -1
        return w, qp.scale.astype(np.float64).reshape(-1), axis


def _clamp_bounds(g: _Graph, act: onnx.NodeProto | None, scale: float, zp: int) -> tuple[int, int]:
    """Integer clamp of a fused Relu/Clip: ``lo = max(-128, z + rint(min/s))``, likewise ``hi``."""
    lo, hi = _INT8_MIN, _INT8_MAX
    if act is None:
        return lo, hi
    if act.op_type == "Relu":
        return max(lo, zp), hi
    attrs = _attrs(act)
    cmin = attrs.get("min")
    cmax = attrs.get("max")
    for pos in (1, 2):
        if len(act.input) > pos and act.input[pos]:
            if act.input[pos] not in g.consts:
                raise _Refuse(f"{_label(act)} has non-constant bounds")
            value = float(g.consts[act.input[pos]])
            cmin, cmax = (value, cmax) if pos == 1 else (cmin, value)
    if cmin is not None:
        lo = max(lo, zp + int(np.rint(np.float32(cmin) / np.float32(scale))))
    if cmax is not None:
        hi = min(hi, zp + int(np.rint(np.float32(cmax) / np.float32(scale))))
    return lo, hi


def _bias(g: _Graph, tensor: str, acc_scale: np.ndarray, channels: int) -> np.ndarray:
    """int32 bias at scale ``s_x·s_w[c]``: the DQ'd int32 initializer, or ``rint(b / (s_x·s_w))``."""
    if not tensor:
        return np.zeros(channels, np.int64)
    dq = g.producer.get(tensor)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in g.consts:
        qp = g.qparams(dq)
        q = g.consts[dq.input[0]].astype(np.int64).reshape(-1)
        same = np.allclose(np.broadcast_to(qp.scale.reshape(-1), acc_scale.shape), acc_scale, rtol=1e-5)
        if same and np.all(qp.zero_point == 0) and q.size == channels:
            return q
        real = (q - qp.zero_point.reshape(-1)) * qp.scale.astype(np.float64).reshape(-1)
    elif tensor in g.consts:
        real = g.consts[tensor].astype(np.float64).reshape(-1)
    else:
        raise _Refuse(f"bias '{tensor}' is not a constant")
    return np.rint(np.broadcast_to(real, (channels,)) / acc_scale).astype(np.int64)


def _requant_params(real: np.ndarray | float) -> dict[str, np.ndarray]:
    mult, shift = quantize_multiplier(real)
    return {"mult": mult, "shift": shift}


def _plan_linear(
    g: _Graph, f: onnx.NodeProto, act: onnx.NodeProto | None, out: tuple[float, int]
) -> IntegerOp:
    x, sx, zx = g.activation(f.input[0])
    w, sw, axis = g.weight(f.input[1])
    sy, zy = out
    attrs = _attrs(f)
    params: dict[str, Any] = {"zx": zx, "zy": zy}
    if f.op_type == "Conv":
        if w.ndim != 4:
            raise _Refuse(f"{_label(f)} is a {w.ndim - 2}-D convolution; only 2-D is lowered")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            raise _Refuse(f"{_label(f)} uses auto_pad={attrs['auto_pad']!r}")
        if axis not in (0, -1):
            raise _Refuse(f"{_label(f)} weights are quantized along axis {axis}, not the output channel")
        channels = w.shape[0]
        wsum = w.astype(np.int64).reshape(channels, -1).sum(axis=1)
        params.update(
            kind_of="conv",
            weight=w,
            strides=tuple(attrs.get("strides", (1, 1))),
            pads=tuple(attrs.get("pads", (0, 0, 0, 0))),
            dilations=tuple(attrs.get("dilations", (1, 1))),
            group=int(attrs.get("group", 1)),
        )
        bias_name = f.input[2] if len(f.input) > 2 else ""
    else:
        if f.op_type == "Gemm":
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                raise _Refuse(f"{_label(f)} has alpha/beta != 1 or transA")
            if attrs.get("transB", 0):
                w = w.T
                axis = {0: 1, 1: 0}.get(axis, axis)
            bias_name = f.input[2] if len(f.input) > 2 else ""
        else:
            bias_name = ""
        if w.ndim != 2:
            raise _Refuse(f"{_label(f)} has a {w.ndim}-D constant operand; only 2-D weights are lowered")
        if axis not in (1, -1):
            raise _Refuse(f"{_label(f)} weights are quantized along axis {axis}, not the output column")
        channels = w.shape[1]
        wsum = w.astype(np.int64).sum(axis=0)
        params.update(kind_of="matmul", weight=np.ascontiguousarray(w))
    sw = np.broadcast_to(sw, (channels,))
    acc_scale = np.float64(sx) * sw
    bias = _bias(g, bias_name, acc_scale, channels) - zx * wsum
    if np.any(bias < _INT32_MIN) or np.any(bias > _INT32_MAX):
        raise _Refuse(f"{_label(f)} bias does not fit int32")
    lo, hi = _clamp_bounds(g, act, sy, zy)
    params.update(bias=bias.astype(np.int32), lo=lo, hi=hi, **_requant_params(acc_scale / sy))
    kind = params.pop("kind_of")
    return IntegerOp(kind, _label(f), [x], "", params)


def _plan_add(g: _Graph, f: onnx.NodeProto, act: onnx.NodeProto | None, out: tuple[float, int]) -> IntegerOp:
    names: list[str] = []
    consts: list[np.ndarray | None] = []
    scales: list[float] = []
    zps: list[int] = []
    for tensor in f.input[:2]:
        dq = g.producer.get(tensor)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in g.consts:
            qp = g.qparams(dq)
            value = g.consts[dq.input[0]]
            if qp.scale.size != 1 or value.dtype != np.int8:
                raise _Refuse(f"{_label(f)} has a per-channel or non-int8 constant operand")
            names.append("")
            consts.append(value)
            scales.append(float(qp.scale.reshape(())))
            zps.append(int(qp.zero_point.reshape(())))
        else:
            name, s, z = g.activation(tensor)
            names.append(name)
            consts.append(None)
            scales.append(s)
            zps.append(z)
    sy, zy = out
    twice_max = 2.0 * max(scales)
    ma = _requant_params(scales[0] / twice_max)
    mb = _requant_params(scales[1] / twice_max)
    mo = _requant_params(twice_max / ((1 << ADD_LEFT_SHIFT) * sy))
    lo, hi = _clamp_bounds(g, act, sy, zy)
    params = {
        "za": zps[0], "zb": zps[1], "zy": zy, "lo": lo, "hi": hi, "consts": consts,
        "mult_a": ma["mult"], "shift_a": ma["shift"], "mult_b": mb["mult"], "shift_b": mb["shift"],
        "mult": mo["mult"], "shift": mo["shift"],
    }  # fmt: skip
    return IntegerOp("add", _label(f), [n for n in names if n], "", params)


def _plan_pool(g: _Graph, f: onnx.NodeProto, act: onnx.NodeProto | None, out: tuple[float, int]) -> IntegerOp:
    x, sx, zx = g.activation(f.input[0])
    sy, zy = out
    attrs = _attrs(f)
    params: dict[str, Any] = {"zx": zx, "zy": zy, "global": f.op_type == "GlobalAveragePool"}
    if f.op_type == "AveragePool":
        kernel = tuple(attrs["kernel_shape"])
        if len(kernel) != 2:
            raise _Refuse(f"{_label(f)} is not a 2-D pool")
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        if attrs.get("ceil_mode", 0):
            raise _Refuse(f"{_label(f)} uses ceil_mode")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            raise _Refuse(f"{_label(f)} uses auto_pad")
        if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
            raise _Refuse(f"{_label(f)} is dilated")
        params.update(
            kernel=kernel,
            strides=tuple(attrs.get("strides", (1, 1))),
            pads=pads,
            exclude_pad=bool(any(pads) and not attrs.get("count_include_pad", 0)),
        )
    lo, hi = _clamp_bounds(g, act, sy, zy)
    # The divisor (H·W of a global pool, the in-bounds count per position when padding is
    # excluded) needs the input shape: see pool_divisor().
    divide = bool(np.float32(sx) == np.float32(sy) and zx == zy)
    params.update(lo=lo, hi=hi, sx=sx, sy=sy, divide=divide)
    return IntegerOp("avgpool", _label(f), [x], "", params)


def pool_divisor(
    params: dict[str, Any], shape: Sequence[int]
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Window size ``K``, divisors ``N`` and the requantization of an integer average pool.

    The kernel sums the window after padding with ``z_x`` and subtracts ``K·z_x``, which gives
    ``acc = Σ_in-bounds (q - z_x)``; the divisor ``N`` is ``K`` (``count_include_pad`` or no padding),
    ``H·W`` (global) or the in-bounds count at each output position. When input and output share
    scale and zero point the pool divides as TFLite/CMSIS-NN do, ``round_half_away(acc / N)``;
    otherwise it requantizes with ``M = s_x / (s_y · N)``.

    Returns:
        ``(K, N, mult, shift)``; ``N``/``mult``/``shift`` have shape ``()`` or ``(1, 1, OH, OW)``.
    """
    if params["global"]:
        window = int(shape[2]) * int(shape[3])
        counts = np.asarray(window, np.int64)
    else:
        kh, kw = params["kernel"]
        window = kh * kw
        counts = np.asarray(window, np.int64)
        if params["exclude_pad"]:
            top, left, bottom, right = params["pads"]
            sh, sw = params["strides"]
            rows = np.zeros(int(shape[2]) + top + bottom, np.int64)
            rows[top : top + int(shape[2])] = 1
            cols = np.zeros(int(shape[3]) + left + right, np.int64)
            cols[left : left + int(shape[3])] = 1
            row_counts = np.convolve(rows, np.ones(kh, np.int64), "valid")[::sh]
            col_counts = np.convolve(cols, np.ones(kw, np.int64), "valid")[::sw]
            counts = np.outer(row_counts, col_counts)[None, None]
    mult, shift = quantize_multiplier(params["sx"] / (params["sy"] * counts.astype(np.float64)))
    return window, counts, mult, shift


def _rescale_op(
    name: str, src: str, dst: str, sx: float, zx: int, sy: float, zy: int, lo: int, hi: int
) -> IntegerOp:
    params = {"zx": zx, "zy": zy, "lo": lo, "hi": hi, **_requant_params(sx / sy)}
    return IntegerOp("rescale", name, [src], dst, params)


def _needs_rescale(sx: float, zx: int, sy: float, zy: int, lo: int, hi: int) -> bool:
    return not (np.float32(sx) == np.float32(sy) and zx == zy and lo == _INT8_MIN and hi == _INT8_MAX)


ROUNDINGS = ("double", "single")


def plan_quantized(model: onnx.ModelProto, rounding: str = "single") -> QuantizedPlan:
    """Find the QDQ groups of ``model`` and rewrite them as integer ops.

    Every ``QuantizeLinear`` (int8, per-tensor, constant parameters) is the anchor of a group:
    its float input, possibly through a ``Relu``/``Clip``, must come from a supported op whose
    tensor inputs are all ``DequantizeLinear`` outputs, and whose float output nobody else reads.
    Groups that do not fit stay float (reported in ``float_nodes``). Afterwards, the remaining
    ``QuantizeLinear``/``DequantizeLinear`` of activations become ``quantize``/``dequantize`` ops
    and nodes whose outputs are no longer read are dropped.

    Args:
        model: A QDQ ONNX model; it is not modified.
        rounding: Requantization rounding, ``single`` (edgec's default) or ``double`` (TFLite's).

    Returns:
        The plan.
    """
    if rounding not in ROUNDINGS:
        raise EdgecError(f"unknown requantization rounding '{rounding}'; use one of {', '.join(ROUNDINGS)}")
    g = _Graph(model)
    ops: list[IntegerOp] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(Q node) → nodes emitted in its place
    absorbed: set[int] = set()
    refused: list[tuple[str, str]] = []
    int8_nodes: set[str] = set()  # ONNX nodes that now move int8 data (not float arithmetic)

    def integer_node(op: IntegerOp) -> onnx.NodeProto:
        op.params["rounding"] = rounding
        ops.append(op)
        return helper.make_node(
            INTEGER_OP, op.inputs, [op.output], name=f"{op.name}__int{len(ops) - 1}",
            domain=INTEGER_DOMAIN, index=len(ops) - 1,
        )  # fmt: skip

    for q in model.graph.node:
        if q.op_type != "QuantizeLinear":
            continue
        f: onnx.NodeProto | None = None
        try:
            t = q.input[0]
            f = g.producer.get(t)
            act = None
            if f is not None and f.op_type in _ACTIVATIONS and g.only_consumer(t, q):
                inner = g.producer.get(f.input[0])
                if (
                    inner is not None
                    and inner.op_type != "DequantizeLinear"
                    and g.only_consumer(f.input[0], f)
                ):
                    act, t, f = f, f.input[0], inner
            if f is None or not g.only_consumer(t, act or q):
                continue  # a Q of a graph input or of a tensor that others read: stays a quantize
            qp = g.qparams(q)
            if qp.scale.size != 1:
                raise _Refuse(
                    f"its output quantization ({_label(q)}) is per-channel; only per-tensor is lowered"
                )
            if qp.dtype != np.int8:
                raise _Refuse(f"its output is quantized to {qp.dtype}; only int8 activations are lowered")
            out = (float(qp.scale.reshape(())), int(qp.zero_point.reshape(())))
            emitted = _plan_group(g, f, act, out, q.output[0], integer_node, int8_nodes)
        except _Refuse as why:
            refused.append((_label(f) if f is not None else _label(q), str(why)))
            continue
        replaced[id(q)] = emitted
        absorbed.update({id(q), id(f)} | ({id(act)} if act is not None else set()))

    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in absorbed:
            nodes.append(node)
    nodes = _dead_code(nodes, g.graph_outputs)

    # Remaining Q/DQ of activations: the float boundary.
    final: list[onnx.NodeProto] = []
    for node in nodes:
        qp = _boundary_qparams(g, node)
        if qp is None:
            final.append(node)
            continue
        kind = "quantize" if node.op_type == "QuantizeLinear" else "dequantize"
        op = IntegerOp(
            kind, _label(node), [node.input[0]], node.output[0],
            {"scale": np.float32(qp.scale.reshape(())), "zp": int(qp.zero_point.reshape(()))},
        )  # fmt: skip
        final.append(integer_node(op))

    float_nodes = [
        (_label(n), next((why for name, why in refused if name == _label(n)), "not part of a QDQ group"))
        for n in final
        if n.domain != INTEGER_DOMAIN
        and n.op_type not in ("DequantizeLinear", "Constant")
        and n.name not in int8_nodes
    ]

    used = {i for n in final for i in n.input} | g.graph_outputs
    graph = helper.make_graph(
        final,
        model.graph.name,
        list(model.graph.input),
        list(model.graph.output),
        [t for t in model.graph.initializer if t.name in used],
    )
    rewritten = helper.make_model(graph, opset_imports=list(model.opset_import))
    rewritten.ir_version = model.ir_version
    return QuantizedPlan(rewritten, ops, float_nodes)


def _boundary_qparams(g: _Graph, node: onnx.NodeProto) -> _QParams | None:
    """Parameters of a remaining per-tensor int8 Q, or DQ of an activation; ``None`` otherwise."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return None
    if node.op_type == "DequantizeLinear" and node.input[0] in g.consts:
        return None  # a weight of a float-remainder node: the frontend converts it
    try:
        qp = g.qparams(node)
    except _Refuse:
        return None
    return qp if qp.scale.size == 1 and qp.dtype == np.int8 else None


def _plan_group(
    g: _Graph,
    f: onnx.NodeProto,
    act: onnx.NodeProto | None,
    out: tuple[float, int],
    dst: str,
    integer_node: Any,
    int8_nodes: set[str],
) -> list[onnx.NodeProto]:
    """The nodes that replace ``f [→ act] → Q`` (output ``dst``); raises ``_Refuse`` if none."""
    sy, zy = out
    if f.op_type in ("Conv", "Gemm", "MatMul"):
        op = _plan_linear(g, f, act, out)
    elif f.op_type == "Add" or (f.op_type == "Sum" and len(f.input) == 2):
        op = _plan_add(g, f, act, out)
    elif f.op_type in ("GlobalAveragePool", "AveragePool"):
        op = _plan_pool(g, f, act, out)
    elif f.op_type in _ACTIVATIONS or f.op_type == "DequantizeLinear":
        # DQ → [Relu|Clip] → Q: a requantization with a clamp.
        x, sx, zx = g.activation(f.input[0] if f.op_type in _ACTIVATIONS else f.output[0])
        lo, hi = _clamp_bounds(g, f if f.op_type in _ACTIVATIONS else act, sy, zy)
        return [integer_node(_rescale_op(_label(f), x, dst, sx, zx, sy, zy, lo, hi))]
    elif f.op_type in _PASS_THROUGH or f.op_type == "Concat":
        return _plan_pass_through(g, f, act, out, dst, integer_node, int8_nodes)
    else:
        raise _Refuse(f"{f.op_type} has no integer lowering")
    op.output = dst
    return [integer_node(op)]


def _plan_pass_through(
    g: _Graph,
    f: onnx.NodeProto,
    act: onnx.NodeProto | None,
    out: tuple[float, int],
    dst: str,
    integer_node: Any,
    int8_nodes: set[str],
) -> list[onnx.NodeProto]:
    """An int8 data-movement node, with rescales where input and output parameters differ."""
    sy, zy = out
    lo, hi = _clamp_bounds(g, act, sy, zy)
    emitted: list[onnx.NodeProto] = []
    inputs = list(f.input)
    data_positions = range(len(inputs)) if f.op_type == "Concat" else [0]
    for pos in data_positions:
        x, sx, zx = g.activation(inputs[pos])
        if f.op_type == "Concat" and _needs_rescale(sx, zx, sy, zy, _INT8_MIN, _INT8_MAX):
            tmp = f"{dst}__edgec_in{pos}"
            emitted.append(integer_node(_rescale_op(_label(f), x, tmp, sx, zx, sy, zy, _INT8_MIN, _INT8_MAX)))
            x, sx, zx = tmp, sy, zy
        inputs[pos] = x
        if f.op_type != "Concat":
            in_params = (sx, zx)
    for pos, name in enumerate(inputs):
        if pos not in data_positions and name and name not in g.consts:
            raise _Refuse(f"{_label(f)} input '{name}' is neither int8 data nor a constant")
    if f.op_type == "Concat":
        in_params = (sy, zy)
    rescale = _needs_rescale(in_params[0], in_params[1], sy, zy, lo, hi)
    if rescale and f.op_type == "MaxPool" and in_params[0] <= 0:
        raise _Refuse(f"{_label(f)} cannot rescale")
    node = onnx.NodeProto()
    node.CopyFrom(f)
    del node.input[:]
    node.input.extend(inputs)
    del node.output[:]
    moved = f"{dst}__edgec_moved" if rescale else dst
    node.output.append(moved)
    node.name = f"{_label(f)}__int8"
    int8_nodes.add(node.name)
    emitted.append(node)
    if rescale:
        emitted.append(
            integer_node(_rescale_op(_label(f), moved, dst, in_params[0], in_params[1], sy, zy, lo, hi))
        )
    return emitted


def _dead_code(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes none of whose outputs is read (iterated to a fixed point)."""
    while True:
        used = set(outputs) | {i for n in nodes for i in n.input}
        kept = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


# --------------------------------------------------------------------------------------------
# Relax emission
# --------------------------------------------------------------------------------------------


def _channel_const(values: np.ndarray, dtype: str, rank: int, axis: int) -> Any:
    """A per-channel constant shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    from tvm import relax

    shape = [1] * rank
    shape[axis] = values.size
    return relax.const(np.asarray(values).astype(dtype).reshape(shape), dtype)


def _clamp(x: Any, lo: float, hi: float, dtype: str) -> Any:
    """``min(max(x, lo), hi)``: unlike ``relax.op.clip``, these have layout inference, so the clamp
    stays in the conv's NHWC epilogue instead of costing two layout transposes."""
    from tvm import relax

    return relax.op.minimum(relax.op.maximum(x, relax.const(lo, dtype)), relax.const(hi, dtype))


def _emit_multiply(x: Any, mult: np.ndarray, shift: np.ndarray, rank: int, axis: int, rounding: str) -> Any:
    """Relax ops for ``MultiplyByQuantizedMultiplier(x, m, shift)`` on int64 (see module docstring).

    ``double``: ``x' = sat32(x << left)``, ``h = (x'·m + 2^30) >> 31``,
    ``r = (h + 2^(right-1) - [h<0]) >> right``. ``single``: ``r = (x·m + 2^(30-shift)) >> (31 - shift)``.
    Per-channel ``m``/``shift`` broadcast along ``axis`` (or are already rank-``rank`` arrays);
    terms that are zero for every channel are not emitted.
    """
    from tvm import relax

    def const(values: np.ndarray) -> Any:
        values = np.asarray(values, np.int64)
        if values.size == 1:
            return relax.const(int(values.reshape(-1)[0]), "int64")
        if values.ndim == rank:  # already broadcastable (per-position pool divisors)
            return relax.const(values, "int64")
        return _channel_const(values, "int64", rank, axis)

    mult = np.asarray(mult, np.int64)
    shift = np.asarray(shift, np.int64)
    if mult.ndim != rank:
        mult, shift = mult.reshape(-1), shift.reshape(-1)
    if rounding == "single":
        total = 31 - shift
        product = relax.op.multiply(x, const(mult))
        return relax.op.right_shift(relax.op.add(product, const(np.int64(1) << (total - 1))), const(total))
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    if np.any(left > 0):
        x = _clamp(relax.op.left_shift(x, const(left)), _INT32_MIN, _INT32_MAX, "int64")
    h = relax.op.right_shift(
        relax.op.add(relax.op.multiply(x, const(mult)), const(np.int64(1 << 30))), const(31)
    )
    if np.any(right > 0):
        nudge = (np.int64(1) << right) >> 1
        neg = relax.op.astype(relax.op.less(h, relax.const(0, "int64")), "int64")
        if not np.all(right > 0):
            neg = relax.op.multiply(neg, const((right > 0).astype(np.int64)))
        h = relax.op.right_shift(relax.op.subtract(relax.op.add(h, const(nudge)), neg), const(right))
    return h


def _emit_requantize(
    bb: Any, acc: Any, p: dict[str, Any], rank: int, axis: int, mult: Any = None, shift: Any = None
) -> Any:
    """``clamp(z_y + MultiplyByQuantizedMultiplier(acc, m, shift), lo, hi)`` → int8."""
    from tvm import relax

    mult = p["mult"] if mult is None else mult
    shift = p["shift"] if shift is None else shift
    h = _emit_multiply(relax.op.astype(acc, "int64"), mult, shift, rank, axis, p["rounding"])
    y = _clamp(relax.op.add(h, relax.const(p["zy"], "int64")), p["lo"], p["hi"], "int64")
    return bb.normalize(relax.op.astype(y, "int8"))


def _emit(bb: Any, op: IntegerOp, inputs: Sequence[Any]) -> Any:
    """The Relax expression of one integer op (``inputs`` are the Relax values of ``op.inputs``)."""
    from tvm import relax

    p = op.params
    if op.kind == "quantize":
        scaled = relax.op.round(relax.op.divide(inputs[0], relax.const(p["scale"], "float32")))
        shifted = relax.op.add(scaled, relax.const(np.float32(p["zp"]), "float32"))
        return relax.op.astype(_clamp(shifted, _INT8_MIN, _INT8_MAX, "float32"), "int8")
    if op.kind == "dequantize":
        centred = relax.op.subtract(relax.op.astype(inputs[0], "int32"), relax.const(p["zp"], "int32"))
        return relax.op.multiply(relax.op.astype(centred, "float32"), relax.const(p["scale"], "float32"))
    if op.kind == "conv":
        x = inputs[0]
        pads = p["pads"]
        padding: tuple[int, ...] = (pads[0], pads[1], pads[2], pads[3])
        if any(pads) and p["zx"] != 0:
            x = relax.op.nn.pad(x, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]], pad_value=p["zx"])
            padding = (0, 0, 0, 0)
        acc = relax.op.nn.conv2d(
            x, relax.const(p["weight"], "int8"), strides=p["strides"], padding=padding,
            dilation=p["dilations"], groups=p["group"], out_dtype="int32",
        )  # fmt: skip
        acc = relax.op.add(acc, _channel_const(p["bias"], "int32", 4, 1))
        return _emit_requantize(bb, acc, p, 4, 1)
    if op.kind == "matmul":
        x = inputs[0]
        rank = len(x.ty.shape) if hasattr(x, "ty") else len(bb.normalize(x).ty.shape)
        acc = relax.op.matmul(x, relax.const(p["weight"], "int8"), out_dtype="int32")
        acc = relax.op.add(acc, relax.const(p["bias"].astype(np.int32), "int32"))
        return _emit_requantize(bb, acc, p, rank, rank - 1)
    if op.kind == "add":
        it = iter(inputs)
        terms = []
        for const, z, m, s in (
            (p["consts"][0], p["za"], p["mult_a"], p["shift_a"]),
            (p["consts"][1], p["zb"], p["mult_b"], p["shift_b"]),
        ):
            q = relax.const(const, "int8") if const is not None else next(it)
            centred = relax.op.subtract(relax.op.astype(q, "int64"), relax.const(z, "int64"))
            shifted = relax.op.left_shift(centred, relax.const(ADD_LEFT_SHIFT, "int64"))
            terms.append(_emit_multiply(shifted, m, s, 0, 0, p["rounding"]))
        total = bb.normalize(relax.op.add(terms[0], terms[1]))
        rank = len(total.ty.shape)
        return _emit_requantize(bb, total, p, rank, rank - 1)
    if op.kind == "rescale":
        x = bb.normalize(inputs[0])
        rank = len(x.ty.shape)
        centred = relax.op.subtract(relax.op.astype(x, "int32"), relax.const(p["zx"], "int32"))
        return _emit_requantize(bb, centred, p, rank, 0)
    if op.kind == "avgpool":
        x = bb.normalize(inputs[0])
        shape = [int(d) for d in x.ty.shape]
        window, counts, mult, shift = pool_divisor(p, shape)
        if p["global"]:
            total = relax.op.sum(relax.op.astype(x, "int32"), axis=[2, 3], keepdims=True)
        else:
            pads = p["pads"]
            if any(pads):
                x = relax.op.nn.pad(x, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]], pad_value=p["zx"])
            ones = np.ones((shape[1], 1, *p["kernel"]), np.int8)
            total = relax.op.nn.conv2d(
                x, relax.const(ones, "int8"), strides=p["strides"], groups=shape[1], out_dtype="int32"
            )
        acc = relax.op.subtract(total, relax.const(window * p["zx"], "int32"))
        if not p["divide"]:
            return _emit_requantize(bb, acc, p, 4, 1, mult, shift)
        # round_half_away(acc / N) = sign(acc) · ((|acc| + N // 2) // N)
        n = relax.const(counts.astype(np.int32), "int32")
        half = relax.const((counts // 2).astype(np.int32), "int32")
        magnitude = relax.op.floor_divide(relax.op.add(relax.op.abs(acc), half), n)
        rounded = relax.op.where(
            relax.op.less(acc, relax.const(0, "int32")), relax.op.negative(magnitude), magnitude
        )
        y = _clamp(relax.op.add(rounded, relax.const(p["zy"], "int32")), p["lo"], p["hi"], "int32")
        return bb.normalize(relax.op.astype(y, "int8"))
    raise EdgecError(f"unknown integer op kind '{op.kind}' for {op.name}")


def _importer_class() -> type:
    """``ONNXGraphImporter`` with ``EdgecInteger`` nodes emitted by :func:`_emit` (and, from its
    base, packed 4/2-bit weights by :func:`.packed_weights.emit_dequantize`)."""
    from .packed_weights import PACKED_OP, importer_class

    class IntegerImporter(importer_class()):
        edgec_ops = frozenset({INTEGER_OP, PACKED_OP})

        def __init__(self, ops: list[IntegerOp], *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._edgec_ops = ops

        def _convert_operator(self, op_name: str, inputs: Any, attrs: dict, opset: int) -> Any:
            if op_name == INTEGER_OP:
                op = self._edgec_ops[attrs["index"]]
                return self.bb.normalize(_emit(self.bb, op, list(inputs)))
            return super()._convert_operator(op_name, inputs, attrs, opset)

    return IntegerImporter


def lower_quantized(
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    rounding: str = "single",
) -> tvm.IRModule:
    """Lower a QDQ ONNX model to a Relax module whose quantized groups are integer kernels.

    Args:
        model: The QDQ model; not modified.
        input_shapes: Static shapes for the graph inputs (needed when they are dynamic).
        rounding: Requantization rounding (see :func:`requantize`).

    Returns:
        A Relax module with function ``main`` taking the graph inputs in order (float inputs are
        quantized inside, outputs dequantized inside, as the QDQ graph says).

    Raises:
        UnsupportedNodeError: For a float-remainder node the TVM frontend cannot convert.
        EdgecError: If an input has no static shape or the import fails (names the node).
    """
    from .frontend import prepare_for_frontend, run_frontend
    from .packed_weights import rewrite_packed_dequantize

    work, shapes, dtypes = prepare_for_frontend(model, input_shapes)
    # Packed INT4/INT2 weights first: the planner and TVM's initializer parser read every
    # initializer as one numpy byte per element.
    packed = rewrite_packed_dequantize(work)
    plan = plan_quantized(work, rounding)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _importer_class()(plan.ops, packed, shapes, dtypes, keep_params_in_input=False, sanitize=True)
    return run_frontend(lambda: importer.from_onnx(plan.model.graph, opset))


def lower_onnx(
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    rounding: str = "single",
) -> tvm.IRModule:
    """The x86/Arm ``lower`` entry point: integer kernels for a QDQ model, the float import otherwise.

    Args:
        model: The ONNX model.
        input_shapes: Static input shapes (as for :func:`edgec.targets.tvm.frontend.import_onnx`).
        rounding: Requantization rounding of the integer kernels (see :func:`requantize`).

    Returns:
        The Relax module, ready for ``optimize_for_cpu``.
    """
    # Quantized activations (QuantizeLinear) make integer kernels; weight-only models (only
    # DequantizeLinear on constants) run float kernels on weights kept as integers.
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return lower_quantized(model, input_shapes, rounding)
    from .frontend import import_onnx

    return import_onnx(model, input_shapes)
