"""Preparing a float graph for quantization, building int8 variants of it, and measuring them.

Shared by the ``quantize`` pass, the sensitivity analysis and the mixed-precision search: the graph
is prepared once (BatchNormalization folded, ``Sum`` as a chain of ``Add``, opset raised for per-axis
QDQ, shapes inferred), calibrated once, and every variant is built from a copy of it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from edgec.capabilities import Capabilities
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, infer_shapes, static_shape
from edgec.passes.quantization.calibration import as_samples, collect_ranges
from edgec.passes.quantization.numerics import packed_bytes
from edgec.passes.quantization.qdq import Plan, make_plan
from edgec.passes.quantization.qdq_insert import apply_plan
from edgec.pm import PassContext, get_pass
from edgec.verify import accuracy, error_metrics, run_onnx_batch

# ONNX IR version each opset needs (int4 QDQ arrived with opset 21 / IR 10, int2 with 25 / IR 11).
_IR_FOR_OPSET = {13: 7, 21: 10, 25: 11}
_INTEGER_WEIGHT_TYPES = (
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT4,
    onnx.TensorProto.INT2,
)
# Error is measured on at most this many calibration samples (enough for a stable mean).
ERROR_SAMPLES = 64


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
    with contextlib.suppress(EdgecError):
        # Unknown shapes only cost memory estimates in calibration; dtypes come from the importer.
        infer_shapes(graph)
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
class Evaluator:
    """Measures quantized variants against the float graph: output error on calibration samples and,
    with labelled evaluation data, top-1 accuracy."""

    reference: EdgeGraph
    samples: dict[str, np.ndarray]
    evaluation: dict[str, np.ndarray] | None = None
    _float_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    _float_accuracy: float | None = None

    def __post_init__(self) -> None:
        count = len(next(iter(self.samples.values())))
        self.samples = {k: v[: min(count, ERROR_SAMPLES)] for k, v in self.samples.items()}
        model = self.reference.to_onnx()
        self._float_outputs = run_onnx_batch(model, self.samples)
        if self.evaluation is not None:
            self._float_accuracy = self._accuracy(model)

    def _accuracy(self, model: onnx.ModelProto) -> float:
        inputs = {
            t.name: as_samples(np.asarray(self.evaluation[t.name]), static_shape(t) or ())
            for t in self.reference.inputs
        }
        outputs = run_onnx_batch(model, inputs)
        first = model.graph.output[0].name
        return accuracy(outputs[first], self.evaluation["label"])

    def measure(self, graph: EdgeGraph) -> dict[str, Any]:
        """``error`` (max/mean abs, cosine, and ``relative`` = mean|y_q - y| / mean|y|) and, with
        evaluation data, ``accuracy`` (float, quantized, drop in points of fraction)."""
        model = graph.to_onnx()
        outputs = run_onnx_batch(model, self.samples)
        metrics = error_metrics(self._float_outputs, outputs, samples=len(next(iter(self.samples.values()))))
        scale = float(np.mean([np.abs(v).mean() for v in self._float_outputs.values()]))
        report: dict[str, Any] = {
            "error": {**metrics.as_dict(), "relative": float(f"{metrics.mean_abs / max(scale, 1e-12):.6g}")}
        }
        if self.evaluation is not None:
            quantized = self._accuracy(model)
            report["accuracy"] = {
                "float": round(self._float_accuracy, 6),
                "quantized": round(quantized, 6),
                "drop": round(self._float_accuracy - quantized, 6),
            }
        return report

    def metric(self, report: dict[str, Any], kind: str) -> float:
        """The budgeted number: accuracy drop (fraction) or relative output error."""
        return float(report["accuracy"]["drop"]) if kind == "accuracy" else float(report["error"]["relative"])
