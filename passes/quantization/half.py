"""Float16 compute: every float op runs in float16 (``y = op(fp16(x), fp16(w))``, rounded to fp16
after each op) through onnxruntime's ``convert_float_to_float16``, with the float32 graph inputs and
outputs cast at the boundary and float32 kept for nodes whose values exceed the float16 range or
that the converter blocks."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.quantization.calibration import collect_ranges

FP16_MAX = float(np.finfo(np.float16).max)
# An activation above this fraction of the float16 maximum on the samples keeps its producer and
# consumers in float32: the samples are a few inputs, an unseen one can go higher, and the partial
# sums of a reduction can exceed its result.
ACTIVATION_HEADROOM = 0.5


def float32_nodes(
    graph: EdgeGraph, samples: dict[str, np.ndarray], exclude: frozenset[str]
) -> dict[str, str]:
    """The nodes that must stay float32, each with the reason.

    A node stays float32 when it is excluded, when onnxruntime's converter blocks its op
    (``DEFAULT_OP_BLOCK_LIST``: TopK, Range, CumSum, Min, Max, ...), when one of its float32
    constants has ``max|w| > 65504``, or when a float tensor it reads or writes reaches
    ``max|x| > ACTIVATION_HEADROOM * 65504`` on ``samples``.

    Args:
        graph: The float32 graph.
        samples: Input arrays with a leading sample axis (calibration or random data).
        exclude: Node names the user keeps in float32.

    Returns:
        ``{node name: reason}``.
    """
    # onnxruntime is imported on use: listing or parsing passes should not load it.
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    reasons: dict[str, str] = {}
    for node in graph.nodes:
        if node.name in exclude:
            reasons[node.name] = "excluded"
        elif node.op in DEFAULT_OP_BLOCK_LIST:
            reasons[node.name] = f"{node.op} is on onnxruntime's float16 block list"
        else:
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant) and tensor.dtype == np.float32:
                    peak = float(np.abs(tensor.values).max(initial=0.0))
                    if peak > FP16_MAX:
                        reasons[node.name] = f"constant '{tensor.name}' exceeds the float16 range (65504)"
                        break
    tensors = [t for t in graph.inputs if t.dtype == np.float32]
    tensors += [t for node in graph.nodes for t in node.outputs if t.dtype == np.float32]
    ranges = collect_ranges(graph, [t.name for t in tensors], samples, "minmax")
    limit = ACTIVATION_HEADROOM * FP16_MAX
    for tensor in tensors:
        lo, hi = ranges[tensor.name]
        peak = max(-lo, hi)
        if peak <= limit:
            continue
        # Producer and consumers both: a float16 neighbour would round the tensor to fp16 (inf).
        reason = (
            f"tensor '{tensor.name}' reaches {peak:.4g} on the samples, beyond {limit:g} (float16 headroom)"
        )
        for node in [*tensor.inputs, *tensor.outputs]:
            reasons.setdefault(node.name, reason)
    return reasons


def to_fp16_compute(
    graph: EdgeGraph, samples: dict[str, np.ndarray], exclude: frozenset[str]
) -> tuple[EdgeGraph, dict[str, str], dict[str, str]]:
    """A copy of ``graph`` that computes in float16, with float32 graph inputs and outputs.

    Args:
        graph: The float32 graph (BatchNormalization already folded, shapes inferred).
        samples: Input arrays with a leading sample axis, for the activation range check.
        exclude: Node names to keep in float32.

    Returns:
        ``(graph, precision, refused)``: ``precision`` maps each node that now computes in float16
        to ``"fp16-compute"`` (Resize and friends note the input that stays float32), ``refused``
        maps each node kept in float32 to the reason (see :func:`float32_nodes`).
    """
    from onnxruntime.transformers.float16 import ALWAYS_FLOAT_INPUTS, convert_float_to_float16

    refused = float32_nodes(graph, samples, exclude)
    converter_log = logging.getLogger("onnxruntime.transformers.float16")
    level = converter_log.level
    # The converter logs at INFO for every shared initializer; edgec reports through the pass stats.
    converter_log.setLevel(logging.WARNING)
    try:
        model = convert_float_to_float16(graph.to_onnx(), keep_io_types=True, node_block_list=sorted(refused))
    finally:
        converter_log.setLevel(level)
    half = EdgeGraph.from_onnx(model)
    _drop_float32_round_trips(half)
    half.gs.toposort()
    half.cleanup()
    precision: dict[str, str] = {}
    for node in graph.nodes:
        if node.name in refused or not any(t.dtype == np.float32 for t in node.outputs):
            continue
        kept = ALWAYS_FLOAT_INPUTS.get(node.op, [])
        kept_names = [node.inputs[i].name for i in kept if i < len(node.inputs) and node.inputs[i].name]
        precision[node.name] = "fp16-compute" + (f" ({', '.join(kept_names)} float32)" if kept_names else "")
    return half, precision, refused


def _drop_float32_round_trips(graph: EdgeGraph) -> int:
    """Removes ``Cast(to=float)(Cast(to=float16)(x))`` for float32 ``x``; returns how many.

    The converter puts such pairs between two float32 nodes (each blocked node casts its output
    to float16 and its inputs back), and between a float32 graph input and a float32 node: the
    round trip would round ``x`` to float16, which is what keeping those nodes float32 avoids.
    """
    dropped = 0
    for node in list(graph.nodes):
        if node.op != "Cast" or node.attrs.get("to") != onnx.TensorProto.FLOAT:
            continue
        inner = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if inner is None or inner.op != "Cast" or inner.attrs.get("to") != onnx.TensorProto.FLOAT16:
            continue
        source = inner.inputs[0]
        if source.dtype != np.float32:
            continue
        result = node.outputs[0]
        if graph.is_graph_output(result):
            # A graph output keeps its name: the Cast becomes a copy of the float32 source.
            node.op, node.attrs, node.inputs[0] = "Identity", {}, source
        else:
            for consumer in graph.consumers(result):
                for index, tensor in enumerate(consumer.inputs):
                    if tensor is result:
                        consumer.inputs[index] = source
            node.outputs.clear()
            node.inputs.clear()
        dropped += 1
    return dropped
