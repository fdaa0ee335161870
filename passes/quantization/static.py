"""Preparing a float graph for quantization, building int8 variants of it, and measuring them.

Shared by the ``quantize`` pass, the sensitivity analysis and the mixed-precision search: the graph
is prepared once (BatchNormalization folded, ``Sum`` as a chain of ``Add``, opset raised for per-axis
QDQ, shapes inferred), calibrated once, and every variant is built from a copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from edgec.capabilities import Capabilities
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.passes.common import Evaluator as ModelEvaluator
from edgec.passes.quantization.calibration import collect_ranges
from edgec.passes.quantization.numerics import packed_bytes
from edgec.passes.quantization.qdq import Plan, make_plan
from edgec.passes.quantization.qdq_insert import apply_plan
from edgec.pm import PassContext, get_pass

# ONNX IR version each opset needs (int4 QDQ arrived with opset 21 / IR 10, int2 with 25 / IR 11).
_IR_FOR_OPSET = {13: 7, 21: 10, 25: 11}
_INTEGER_WEIGHT_TYPES = (
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT4,
    onnx.TensorProto.INT2,
)


def weight_bytes(graph: EdgeGraph) -> int:
    """Bytes of all initializers as stored in ONNX (int4/int2 packed)."""
    return packed_bytes(graph.to_onnx().graph.initializer)


def integer_weight_bytes(graph: EdgeGraph) -> dict[str, float]:
    """Bytes of the integer (u/int8, int4, int2) initializers and of the float32 tensors they replace
    (same element count, 4 bytes each): the compression of the quantized weights themselves."""
    stored = replaced = 0
    for tensor in graph.to_onnx().graph.initializer:
        if tensor.data_type in _INTEGER_WEIGHT_TYPES:
            elements = int(np.prod(tensor.dims))
            stored += len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes
            replaced += 4 * elements
    return {"float_bytes": replaced, "bytes": stored, "compression": round(replaced / max(stored, 1), 3)}


def ensure_opset(graph: EdgeGraph, minimum: int) -> EdgeGraph:
    """The graph at opset ``minimum`` or later (converted by onnx's version converter)."""
    if graph.opset < minimum:
        model = graph.to_onnx()
        try:
            converted = version_converter.convert_version(model, minimum)
        except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
            raise EdgecError(
                f"cannot convert the model from opset {graph.opset} to {minimum} for quantization: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        graph = EdgeGraph.from_onnx(converted)
    graph.info.ir_version = max(graph.info.ir_version, _IR_FOR_OPSET.get(minimum, 7))
    return graph


def prepare(
    graph: EdgeGraph, ctx: PassContext, minimum_opset: int, fold_batchnorm: bool
) -> tuple[EdgeGraph, dict]:
    """Folds BatchNormalization into Conv (the ``fuse-conv-bn`` pass), raises the opset and infers
    shapes; returns the prepared graph and what was done."""
    done: dict[str, Any] = {}
    if fold_batchnorm and any(node.op == "BatchNormalization" for node in graph.nodes):
        result = ctx.run_pass(get_pass("fuse-conv-bn")(), graph)
        graph = result.graph
        done["folded_batchnorm"] = int(result.stats.get("fused", 0))
    # A Sum is a chain of Add, which has a quantized form (residual connections in resnet50).
    if any(node.op == "Sum" for node in graph.nodes):
        done["sum_as_add"] = int(ctx.run_pass(get_pass("split-sum")(), graph).stats.get("split", 0))
    shapes_before = sum(node.op == "Shape" for node in graph.nodes)
    graph = ensure_opset(graph, minimum_opset)
    if sum(node.op == "Shape" for node in graph.nodes) > shapes_before:
        # onnx's version converter writes some ops with run-time shape arithmetic (Softmax of
        # opset < 13 becomes Shape → Flatten → Softmax → Reshape): fold it again, the shapes are
        # static (only then: onnxslim takes seconds on a large model).
        graph = ctx.run_pass(get_pass("simplify")(), graph).graph
    # Unknown shapes (inference failed) only cost memory estimates in calibration; dtypes come
    # from the importer.
    ctx.analyses.get("shapes", graph)
    done["opset"] = graph.opset
    return graph, done


def build_int8(
    prepared: EdgeGraph,
    ranges: dict[str, tuple[float, float]],
    exclude: frozenset[str],
    symmetric: bool,
    per_channel: bool,
    calibrate: Any = None,
    shared_concat: bool = True,
    capabilities: Capabilities | None = None,
) -> tuple[EdgeGraph, Plan]:
    """A static int8 copy of ``prepared`` with ``exclude`` kept in float (and what the target,
    when ``capabilities`` are given, would not run as integers).

    ``calibrate(names)`` supplies ranges missing from ``ranges`` (tensors only this variant needs).
    """
    graph = prepared.copy()
    plan = make_plan(graph, exclude, symmetric, shared_concat, capabilities)
    missing = [name for name in plan.calibration_names() if name not in ranges]
    if missing:
        if calibrate is None:
            raise EdgecError(f"no calibrated range for {missing[:3]}")
        ranges = {**ranges, **calibrate(missing)}
    apply_plan(graph, plan, ranges, symmetric, per_channel)
    return graph, plan


def calibrate_plan(
    graph: EdgeGraph,
    plan: Plan,
    samples: dict[str, np.ndarray],
    method: str,
    percentile: float,
    progress: Any = None,
) -> dict[str, tuple[float, float]]:
    return collect_ranges(graph, plan.calibration_names(), samples, method, percentile, progress)


@dataclass
class Evaluator(ModelEvaluator):
    """Measures quantized variants against the float graph (``accuracy`` keys ``float``,
    ``quantized``, ``drop``)."""

    labels: tuple[str, str] = ("float", "quantized")
