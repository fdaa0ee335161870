"""Reading a QDQ group on an ``EdgeGraph``: quantization parameters, int8 activations, int8
weights, biases and fused clamps, each refused with a reason when it does not fit an integer kernel.

A QDQ group is ``DQ(x_q) [, DQ(w_q) [, DQ(b_q)]] → f [→ Relu | Clip] → Q`` (the standard form written
by ``quantize`` and onnxruntime's ``quantize_static``); :class:`Group` is the part a rule matched:
the float node, its optional fused activation, and the quantization of the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from edgec.targets.integer.fixed_point import INT8_MAX, INT8_MIN

__all__ = ["Activation", "Group", "QParams", "Refuse", "activation", "bias", "clamp_bounds", "qparams"]


class Refuse(Exception):
    """A group that cannot become integer kernels (it stays float); the message says why."""


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of a QuantizeLinear/DequantizeLinear (constants)."""

    scale: np.ndarray  # float32, scalar or per-channel
    zero_point: np.ndarray  # int64
    axis: int
    dtype: np.dtype  # of the quantized tensor (the zero point's dtype)

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1


@dataclass(frozen=True)
class Activation:
    """An int8 activation read through DequantizeLinear: the int8 tensor and its parameters."""

    tensor: gs.Tensor
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Group:
    """A matched QDQ group: ``node [→ act] → Q`` writing the int8 tensor ``output``."""

    node: gs.Node
    act: gs.Node | None
    output: gs.Variable
    scale: float
    zero_point: int
    rounding: str


def label(node: gs.Node) -> str:
    return f"{node.op} '{node.name}'"


def _constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def qparams(node: gs.Node) -> QParams:
    """Scale and zero point of a QuantizeLinear or DequantizeLinear node (constants only)."""
    scale = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is None:
        raise Refuse(f"{label(node)} has a non-constant scale")
    present = len(node.inputs) > 2 and node.inputs[2].name
    zero = _constant(node.inputs[2]) if present else np.zeros(scale.shape, np.uint8)  # ONNX default
    if zero is None:
        raise Refuse(f"{label(node)} has a non-constant zero point")
    if node.attrs.get("block_size", 0):
        raise Refuse(f"{label(node)} uses blocked quantization")
    scale = scale.astype(np.float32)
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise Refuse(f"{label(node)} has a non-positive or non-finite scale")
    return QParams(scale, zero.astype(np.int64), int(node.attrs.get("axis", 1)), np.dtype(zero.dtype))


def output_params(q: gs.Node) -> tuple[float, int]:
    """``(scale, zero point)`` of the QuantizeLinear that ends a group (per-tensor int8 only)."""
    params = qparams(q)
    if not params.per_tensor:
        raise Refuse(f"its output quantization ({label(q)}) is per-channel; only per-tensor is lowered")
    if params.dtype != np.int8:
        raise Refuse(f"its output is quantized to {params.dtype}; only int8 activations are lowered")
    return float(params.scale.reshape(())), int(params.zero_point.reshape(()))


def dequantize_of(tensor: gs.Tensor) -> gs.Node | None:
    """The DequantizeLinear that writes ``tensor``, if one does."""
    producer = tensor.inputs[0] if tensor.inputs else None
    return producer if producer is not None and producer.op == "DequantizeLinear" else None


def activation(tensor: gs.Tensor) -> Activation:
    """The int8 activation behind a float tensor made by DequantizeLinear of a non-constant."""
    dq = dequantize_of(tensor)
    if dq is None:
        raise Refuse(f"input '{tensor.name}' is not the output of a DequantizeLinear")
    if isinstance(dq.inputs[0], gs.Constant):
        raise Refuse(f"input '{tensor.name}' is a constant, not an activation")
    params = qparams(dq)
    if not params.per_tensor:
        raise Refuse(f"activation '{tensor.name}' is quantized per channel; only per-tensor is lowered")
    if params.dtype != np.int8:
        raise Refuse(f"activation '{tensor.name}' is {params.dtype}; only int8 activations are lowered")
    return Activation(dq.inputs[0], float(params.scale.reshape(())), int(params.zero_point.reshape(())))


def weight(tensor: gs.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """``(int8 weights, per-channel scales (or one) as float64, axis or -1)`` of DQ(constant int8)."""
    dq = dequantize_of(tensor)
    if dq is None or not isinstance(dq.inputs[0], gs.Constant):
        raise Refuse(f"weight '{tensor.name}' is not a DequantizeLinear of a constant")
    if dq.inputs[0].dtype != np.int8:
        raise Refuse(
            f"weight '{tensor.name}' is {np.dtype(dq.inputs[0].dtype)}; only int8 weights are lowered"
        )
    params = qparams(dq)
    values = np.asarray(dq.inputs[0].values)
    if np.any(params.zero_point != 0):
        raise Refuse(f"weight '{tensor.name}' has a non-zero zero point (only symmetric weights)")
    axis = params.axis % values.ndim if not params.per_tensor else -1
    return values, params.scale.astype(np.float64).reshape(-1), axis


def constant_operand(tensor: gs.Tensor) -> tuple[np.ndarray, float, int] | None:
    """``(int8 values, scale, zero point)`` of a per-tensor DQ(constant int8), ``None`` for other
    tensors; refuses a constant operand quantized any other way."""
    dq = dequantize_of(tensor)
    if dq is None or not isinstance(dq.inputs[0], gs.Constant):
        return None
    params = qparams(dq)
    if not params.per_tensor or dq.inputs[0].dtype != np.int8:
        raise Refuse(f"constant operand '{tensor.name}' is per-channel or not int8")
    values = np.asarray(dq.inputs[0].values)
    return values, float(params.scale.reshape(())), int(params.zero_point.reshape(()))


def clamp_bounds(act: gs.Node | None, scale: float, zero_point: int) -> tuple[int, int]:
    """Integer clamp of a fused Relu/Clip: ``lo = max(-128, z + rint(min/s))``, likewise ``hi``."""
    lo, hi = INT8_MIN, INT8_MAX
    if act is None:
        return lo, hi
    if act.op == "Relu":
        return max(lo, zero_point), hi
    low, high = act.attrs.get("min"), act.attrs.get("max")
    for position in (1, 2):
        if len(act.inputs) > position and act.inputs[position].name:
            value = _constant(act.inputs[position])
            if value is None:
                raise Refuse(f"{label(act)} has non-constant bounds")
            low, high = (float(value), high) if position == 1 else (low, float(value))
    if low is not None:
        lo = max(lo, zero_point + int(np.rint(np.float32(low) / np.float32(scale))))
    if high is not None:
        hi = min(hi, zero_point + int(np.rint(np.float32(high) / np.float32(scale))))
    return lo, hi


def bias(tensor: gs.Tensor | None, acc_scale: np.ndarray, channels: int) -> np.ndarray:
    """int32 bias at scale ``s_x·s_w[c]``: the DQ'd int32 initializer, or ``rint(b / (s_x·s_w))``."""
    if tensor is None or not tensor.name:
        return np.zeros(channels, np.int64)
    dq = dequantize_of(tensor)
    if dq is not None and isinstance(dq.inputs[0], gs.Constant):
        params = qparams(dq)
        q = np.asarray(dq.inputs[0].values).astype(np.int64).reshape(-1)
        scales = np.broadcast_to(params.scale.reshape(-1), acc_scale.shape)
        same = np.allclose(scales, acc_scale, rtol=1e-5)
        if same and np.all(params.zero_point == 0) and q.size == channels:
            return q
        real = (q - params.zero_point.reshape(-1)) * params.scale.astype(np.float64).reshape(-1)
    elif isinstance(tensor, gs.Constant):
        real = np.asarray(tensor.values).astype(np.float64).reshape(-1)
    else:
        raise Refuse(f"bias '{tensor.name}' is not a constant")
    if real.size not in (1, channels):
        raise Refuse(f"'{tensor.name}' is not a per-channel bias ({real.size} values, {channels} channels)")
    return np.rint(np.broadcast_to(real, (channels,)) / acc_scale).astype(np.int64)
