"""Schemes without activation calibration: weight-only int8/int4/int2, int8-dynamic and fp16.

- weight-only: ``W`` becomes ``DequantizeLinear(q, s, axis[, block_size])`` with ``q`` stored as
  int8, or as ONNX INT4 / INT2 initializers (packed two / four per byte, opset 21 / 25; onnxruntime
  1.32 runs both), computed in float. Binary weights are ``±1`` in an INT2 initializer (targets
  store them at one bit). With ``group_size``, scales are per block of that many weights along the
  reduction axis (a Conv's weight is blocked flattened to 2-D, then reshaped back).
- int8-dynamic (MatMul/Gemm): ``x_q, s_x, z_x = DynamicQuantizeLinear(x)`` at run time, then
  ``y = float(MatMulInteger(x_q, W_u, z_x, 128)) * (s_x * s_w) + b`` with per-column ``s_w`` and the
  symmetric int8 weight stored as ``W_u = W_q + 128`` (uint8): onnxruntime's u8s8 kernel on x86
  without VNNI (``vpmaddubsw``) saturates int16 pair sums (an error of 1e4 in the accumulator on a
  32-deep MatMul), its u8u8 kernel is exact, and the integer product is the same.
- fp16: float32 weights stored as float16 initializers followed by ``Cast(to=float)``; compute
  stays float32.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.capabilities import Capabilities
from edgec.ir import EdgeGraph
from edgec.passes.quantization.numerics import check_finite, quantize_weight
from edgec.passes.quantization.qdq_insert import dequantized_weight

WEIGHT_ONLY_OPS = ("Conv", "Gemm", "MatMul")
# Ops whose float constant operands may be stored in float16 behind a Cast (data, not attributes
# that importers need as literal constants such as Clip bounds or Resize scales).
FP16_OPS = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "BatchNormalization",
    "PRelu",
)
FP16_MAX = float(np.finfo(np.float16).max)


def _weight_refusal(node: gs.Node) -> str | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(weight, gs.Constant):
        return "its weight is not a constant"
    if weight.values.dtype != np.float32:
        return f"its weight '{weight.name}' is {weight.values.dtype}, not float32"
    if node.op == "Gemm" and weight.values.ndim != 2:
        return "Gemm weight is not 2-D"
    check_finite(weight, node)
    return None


def weight_axes(node: gs.Node, ndim: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of the weight of a Conv/Gemm/MatMul."""
    if node.op == "Conv":
        return 0, 1
    if node.op == "Gemm":
        return (0, 1) if node.attrs.get("transB", 0) else (1, 0)
    return ndim - 1, ndim - 2


def weight_only(
    graph: EdgeGraph,
    bits: int,
    per_channel: bool,
    group_size: int,
    exclude: frozenset[str],
    capabilities: Capabilities | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Stores the weights of Conv/Gemm/MatMul in ``bits`` bits; returns (precision, refused).

    A target that cannot keep ``bits``-bit weights at that width in its artifact
    (``capabilities.packed_weight_bits``) would store them as float32: they stay float32 here.
    """
    precision: dict[str, str] = {}
    refused: dict[str, str] = {}
    unpacked = None
    if capabilities is not None and bits not in capabilities.packed_weight_bits:
        unpacked = f"target '{capabilities.target}' does not store {bits}-bit weights (it would keep float32)"
    for node in list(graph.nodes):
        if node.op not in WEIGHT_ONLY_OPS:
            continue
        reason = "excluded" if node.name in exclude else _weight_refusal(node) or unpacked
        if reason:
            refused[node.name] = reason
            continue
        weights = node.inputs[1].values
        # A Conv's reduction spans three axes (C_in/group, kH, kW): its blocks run over the weight
        # flattened to [C_out, C_in/group·kH·kW] (ONNX blocks run along one axis), and a Reshape
        # restores the 4-D weight.
        stored = weights.reshape(weights.shape[0], -1) if node.op == "Conv" else weights
        channel_axis, reduction_axis = weight_axes(node, stored.ndim)
        blocked = bool(group_size) and stored.shape[reduction_axis] > group_size
        if blocked:
            axis: int | None = reduction_axis
        else:
            axis = channel_axis if per_channel else None
            stored = weights
        restored, _ = dequantized_weight(graph, node.name, stored, bits, axis, group_size if blocked else 0)
        if stored.shape != weights.shape:
            restored = _reshaped(graph, node.name, restored, weights.shape)
        node.inputs[1] = restored
        label = "weight-binary" if bits == 1 else f"weight-int{bits}"
        precision[node.name] = label + (f"/g{group_size}" if blocked else "")
    graph.cleanup()
    return precision, refused


def _reshaped(graph: EdgeGraph, node_name: str, tensor: gs.Variable, shape: tuple[int, ...]) -> gs.Variable:
    target = graph.add_constant(f"{node_name}_w_shape", np.array(shape, np.int64))
    output = gs.Variable(graph.fresh_name(f"{node_name}_w"), dtype=tensor.dtype, shape=list(shape))
    graph.gs.nodes.append(
        gs.Node(
            "Reshape",
            name=graph.fresh_name(f"{node_name}_w_reshape"),
            inputs=[tensor, target],
            outputs=[output],
        )
    )
    return output


def dynamic_int8(
    graph: EdgeGraph, per_channel: bool, exclude: frozenset[str], capabilities: Capabilities | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Rewrites MatMul/Gemm with constant 2-D weights to DynamicQuantizeLinear + MatMulInteger
    (unless the target, per ``capabilities``, has no integer kernels at all)."""
    precision: dict[str, str] = {}
    refused: dict[str, str] = {}
    no_kernels = None
    if capabilities is not None and capabilities.integer_kernels is None:
        no_kernels = f"target '{capabilities.target}' has no integer kernels"
    quantized_inputs: dict[str, tuple[gs.Variable, gs.Variable, gs.Variable]] = {}
    for node in list(graph.nodes):
        if node.op == "Conv":
            refused[node.name] = "int8-dynamic quantizes MatMul/Gemm only (use int8 for Conv)"
            continue
        if node.op not in ("MatMul", "Gemm"):
            continue
        reason = "excluded" if node.name in exclude else no_kernels or _weight_refusal(node)
        if reason is None and node.inputs[1].values.ndim != 2:
            reason = "its weight is not 2-D"
        if reason is None and node.attrs.get("transA", 0):
            reason = "Gemm with transA=1 is not supported"
        if reason:
            refused[node.name] = reason
            continue
        weights = node.inputs[1].values.astype(np.float32)
        if node.op == "Gemm" and node.attrs.get("transB", 0):
            weights = weights.T  # MatMulInteger wants [K, N]
        alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
        quantized = quantize_weight(weights, 8, axis=1 if per_channel else None)
        x = node.inputs[0]
        if x.name not in quantized_inputs:
            x_q = gs.Variable(graph.fresh_name(f"{x.name}_q"), dtype=np.uint8)
            x_scale = gs.Variable(graph.fresh_name(f"{x.name}_scale"), dtype=np.float32, shape=[])
            x_zero = gs.Variable(graph.fresh_name(f"{x.name}_zero_point"), dtype=np.uint8, shape=[])
            graph.gs.nodes.append(
                gs.Node(
                    "DynamicQuantizeLinear",
                    name=graph.fresh_name(f"{x.name}_dynamic_quantize"),
                    inputs=[x],
                    outputs=[x_q, x_scale, x_zero],
                )
            )
            quantized_inputs[x.name] = (x_q, x_scale, x_zero)
        x_q, x_scale, x_zero = quantized_inputs[x.name]
        w_q = graph.add_constant(
            f"{node.name}_w_q", (quantized.values.astype(np.int16) + 128).astype(np.uint8)
        )
        w_zero = graph.add_constant(f"{node.name}_w_zero_point", np.array(128, np.uint8))
        w_scale = graph.add_constant(f"{node.name}_w_scale", (quantized.scale * alpha).astype(np.float32))
        output = node.outputs[0]
        accumulator = gs.Variable(graph.fresh_name(f"{node.name}_acc"), dtype=np.int32)
        as_float = gs.Variable(graph.fresh_name(f"{node.name}_acc_float"), dtype=np.float32)
        scale = gs.Variable(graph.fresh_name(f"{node.name}_scale"), dtype=np.float32)
        bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
        product = (
            output
            if bias is None
            else gs.Variable(graph.fresh_name(f"{node.name}_product"), dtype=np.float32)
        )
        new_nodes = [
            gs.Node(
                "MatMulInteger", name=node.name, inputs=[x_q, w_q, x_zero, w_zero], outputs=[accumulator]
            ),
            gs.Node(
                "Cast",
                name=graph.fresh_name(f"{node.name}_cast"),
                attrs={"to": onnx.TensorProto.FLOAT},
                inputs=[accumulator],
                outputs=[as_float],
            ),
            gs.Node(
                "Mul",
                name=graph.fresh_name(f"{node.name}_scales"),
                inputs=[x_scale, w_scale],
                outputs=[scale],
            ),
            gs.Node(
                "Mul",
                name=graph.fresh_name(f"{node.name}_rescale"),
                inputs=[as_float, scale],
                outputs=[product],
            ),
        ]
        if bias is not None:
            beta = float(node.attrs.get("beta", 1.0))
            if isinstance(bias, gs.Constant):
                bias = graph.add_constant(f"{node.name}_bias", (bias.values * beta).astype(np.float32))
            elif beta != 1.0:
                refused[node.name] = "Gemm with a computed C and beta != 1 is not supported"
                continue
            new_nodes.append(
                gs.Node(
                    "Add",
                    name=graph.fresh_name(f"{node.name}_bias_add"),
                    inputs=[product, bias],
                    outputs=[output],
                )
            )
        node.outputs.clear()
        node.inputs.clear()
        graph.gs.nodes.extend(new_nodes)
        precision[node.name] = "int8-dynamic"
    graph.cleanup()
    return precision, refused


def to_fp16(graph: EdgeGraph, exclude: frozenset[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Stores float32 constant operands as float16 + Cast; returns (precision, refused)."""
    precision: dict[str, str] = {}
    refused: dict[str, str] = {}
    casts: dict[str, gs.Variable] = {}
    for node in list(graph.nodes):
        if node.op not in FP16_OPS or node.name in exclude:
            continue
        converted = False
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant) or tensor.values.dtype != np.float32:
                continue
            if tensor.values.size < 2:
                continue  # scalars save nothing and some importers want them literal
            check_finite(tensor, node)
            if float(np.abs(tensor.values).max(initial=0.0)) > FP16_MAX:
                refused[node.name] = f"constant '{tensor.name}' exceeds the float16 range (65504)"
                continue
            if tensor.name not in casts:
                half = graph.add_constant(f"{tensor.name}_fp16", tensor.values.astype(np.float16))
                restored = gs.Variable(
                    graph.fresh_name(f"{tensor.name}_fp32"), dtype=np.float32, shape=list(tensor.values.shape)
                )
                graph.gs.nodes.append(
                    gs.Node(
                        "Cast",
                        name=graph.fresh_name(f"{tensor.name}_cast"),
                        attrs={"to": onnx.TensorProto.FLOAT},
                        inputs=[half],
                        outputs=[restored],
                    )
                )
                casts[tensor.name] = restored
            node.inputs[index] = casts[tensor.name]
            # Targets keep weights of rank 2 or more in float16 and fold 1-D constants (biases,
            # scales: a few bytes) to float32: only the former make the node's weights float16.
            converted |= tensor.values.ndim >= 2
        if converted:
            precision[node.name] = "fp16-weights"
    graph.cleanup()
    return precision, refused
