"""The ``quantize`` pass: static int8 QDQ, int8-dynamic, weight-only int8/int4/int2/binary, or fp16.

Pipeline form: ``quantize{scheme=int8,calibration=entropy}``; with ``budget=0.005`` the most
sensitive layers stay float until the accuracy drop (labelled ``--eval`` data) or the relative output
error (otherwise) is within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from edgec.data import Dataset
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.passes.common import budget_metric, error_samples
from edgec.passes.quantization.calibration import METHODS, check_calibration, collect_ranges
from edgec.passes.quantization.half import to_fp16_compute
from edgec.passes.quantization.qdq import COMPUTE_OPS, Plan, make_plan
from edgec.passes.quantization.sensitivity import layers_of, search_mixed_precision
from edgec.passes.quantization.static import (
    Evaluator,
    build_int8,
    calibrate_plan,
    integer_weight_bytes,
    prepare,
    weight_bytes,
)
from edgec.passes.quantization.weight_only import dynamic_int8, to_fp16, weight_only
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.precision import record as record_precision

SCHEMES = ("int8", "int8-dynamic", "weight-int8", "weight-int4", "weight-int2", "weight-binary", "fp16")
# Opset each scheme needs: per-axis QDQ (13), INT4 and blocked QDQ (21), INT2 (25; binary weights
# are ±1 in an INT2 tensor, which the targets store at one bit).
_MINIMUM_OPSET = {
    "int8": 13,
    "int8-dynamic": 13,
    "weight-int8": 13,
    "weight-int4": 21,
    "weight-int2": 25,
    "weight-binary": 25,
    "fp16": 1,
}
_WEIGHT_BITS = {"weight-int8": 8, "weight-int4": 4, "weight-int2": 2, "weight-binary": 1}


@register
@dataclass(frozen=True)
class Quantize(Pass):
    """Quantizes Conv/Gemm/MatMul and friends to standard QDQ ONNX under the chosen scheme."""

    name: ClassVar[str] = "quantize"
    lossless: ClassVar[bool] = False
    in_place: ClassVar[bool] = False
    scheme: Literal[
        "int8", "int8-dynamic", "weight-int8", "weight-int4", "weight-int2", "weight-binary", "fp16"
    ] = "int8"
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    symmetric_activations: bool = False
    shared_concat_scale: bool = True
    group_size: int = 0
    exclude: tuple[str, ...] = ()
    budget: float | None = None
    budget_metric: Literal["auto", "accuracy", "error"] = "auto"
    max_calibration_samples: int = 1024
    fold_batchnorm: bool = True
    compute: Literal["float32", "float16"] = "float32"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise EdgecError(
                f"unknown quantization scheme '{self.scheme}'; choose one of {', '.join(SCHEMES)}"
            )
        if self.calibration not in METHODS:
            raise EdgecError(
                f"unknown calibration method '{self.calibration}'; choose one of {', '.join(METHODS)}"
            )
        if self.group_size < 0 or (self.group_size and self.group_size < 2):
            raise EdgecError(f"group_size must be 0 (per channel) or at least 2, got {self.group_size}")
        if self.budget is not None and (self.scheme != "int8" or self.budget < 0):
            raise EdgecError("budget applies to scheme=int8 and must be >= 0 (e.g. budget=0.005)")
        if self.max_calibration_samples < 1:
            raise EdgecError("max_calibration_samples must be at least 1")
        if self.compute not in ("float32", "float16"):
            raise EdgecError(f"unknown compute dtype '{self.compute}'; choose float32 or float16")
        if self.compute == "float16" and self.scheme != "fp16":
            raise EdgecError(
                f"compute=float16 needs scheme=fp16, not scheme={self.scheme}; "
                "use quantize{scheme=fp16,compute=float16}"
            )

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        names = {node.name for node in graph.nodes}
        unknown = sorted(set(self.exclude) - names)
        if unknown:
            raise EdgecError(f"quantize{{exclude}} names unknown nodes {unknown}")
        # Data is checked before the graph is touched: a bad --calib leaves nothing half-done.
        samples = self._samples(ctx, graph, required=self.scheme == "int8")
        before = weight_bytes(graph)
        prepared, done = prepare(graph.copy(), ctx, _MINIMUM_OPSET[self.scheme], self.fold_batchnorm)
        if self.scheme == "int8":
            quantized, stats = self._static(prepared, ctx, samples)
        else:
            quantized, stats = self._data_free(prepared, ctx, samples)
        after = weight_bytes(quantized)
        stats = {
            "scheme": self.scheme,
            **stats,
            **done,
            "weight_bytes_before": before,
            "weight_bytes_after": after,
            "compression": round(before / max(after, 1), 3),
            "integer_weights": integer_weight_bytes(quantized),
        }
        # The decisions travel with the graph: the target's build is checked against them.
        record_precision(quantized, stats.get("precision", {}))
        return PassResult(quantized, changed=True, stats=stats)

    # ----- static int8 ---------------------------------------------------------------------------
    def _samples(self, ctx: PassContext, graph: EdgeGraph, required: bool) -> dict[str, np.ndarray] | None:
        if ctx.calibration is None and not required:
            return None
        samples = check_calibration(ctx.calibration, graph, ctx.warn)
        return {k: v[: self.max_calibration_samples] for k, v in samples.items()}

    def _static(
        self, prepared: EdgeGraph, ctx: PassContext, samples: dict[str, np.ndarray]
    ) -> tuple[EdgeGraph, dict[str, Any]]:
        symmetric = self.symmetric_activations

        full = make_plan(
            prepared.copy(), frozenset(self.exclude), symmetric, self.shared_concat_scale, ctx.capabilities
        )
        if not layers_of(full):
            raise EdgecError(
                "no quantizable op: int8 quantizes Conv, Gemm, MatMul, Add, Mul, Concat and pooling; "
                f"this model has {sorted({n.op for n in prepared.nodes})}"
                + (f" (refused: {_first_reasons(full)})" if full.refused else "")
            )
        ranges = calibrate_plan(prepared, full, samples, self.calibration, self.percentile, ctx.progress)

        def calibrate(names: list[str]) -> dict[str, tuple[float, float]]:

            return collect_ranges(prepared, names, samples, self.calibration, self.percentile)

        def build(exclude: frozenset[str]) -> tuple[EdgeGraph, Plan]:
            return build_int8(
                prepared,
                ranges,
                frozenset(self.exclude) | exclude,
                symmetric,
                self.per_channel,
                calibrate,
                self.shared_concat_scale,
                ctx.capabilities,
            )

        stats: dict[str, Any] = {
            "calibration": self.calibration,
            **_calibration_counts(ctx.calibration, samples),
            "per_channel": self.per_channel,
            "symmetric_activations": symmetric,
        }
        if self.budget is None:
            quantized, plan = build(frozenset())
            evaluator = Evaluator(prepared, samples, ctx.evaluation)
            report = evaluator.measure(quantized)
        else:
            kind = budget_metric(self.budget_metric, ctx.evaluation)
            evaluator = Evaluator(prepared, samples, ctx.evaluation)
            quantized, plan, report, summary = search_mixed_precision(
                build, layers_of(full), evaluator, kind, self.budget
            )
            stats["budget"] = summary
            if not summary["met"]:
                ctx.warn(f"quantize: {kind} budget {self.budget} not met ({summary['value']:.4g})")
        stats.update(_plan_stats(plan, prepared))
        stats.update(report)
        return quantized, stats

    # ----- weight-only, dynamic, fp16 ------------------------------------------------------------
    def _data_free(
        self, prepared: EdgeGraph, ctx: PassContext, samples: dict[str, np.ndarray] | None
    ) -> tuple[EdgeGraph, dict[str, Any]]:
        error_data = "calibration"
        if samples is None:
            samples, error_data = error_samples(prepared, ctx)
        evaluator = Evaluator(prepared, samples, ctx.evaluation)
        quantized = prepared.copy()
        exclude = frozenset(self.exclude)
        if self.scheme in _WEIGHT_BITS:
            bits = _WEIGHT_BITS[self.scheme]
            precision, refused = weight_only(
                quantized, bits, self.per_channel, self.group_size, exclude, ctx.capabilities
            )
        elif self.scheme == "int8-dynamic":
            precision, refused = dynamic_int8(quantized, self.per_channel, exclude, ctx.capabilities)
        elif self.compute == "float16":
            quantized, precision, refused = to_fp16_compute(quantized, samples, exclude)
        else:
            precision, refused = to_fp16(quantized, exclude)
        if not precision:
            raise EdgecError(
                f"no quantizable op for scheme={self.scheme} "
                f"({'MatMul/Gemm' if self.scheme == 'int8-dynamic' else 'ops with float weights'}); "
                f"refused: {refused or 'none found'}"
            )
        ops = {node.name: node.op for node in prepared.nodes}
        stats: dict[str, Any] = {
            "per_channel": self.per_channel,
            "group_size": self.group_size,
            "precision": {**{n: "float" for n in refused}, **precision},
            "float_nodes": [
                {"node": n, "op": ops.get(n, "?"), "reason": r} for n, r in sorted(refused.items())
            ],
            "quantized": len(precision),
            "error_data": error_data,
        }
        stats.update(evaluator.measure(quantized))
        return quantized, stats


def _calibration_counts(data: Dataset | dict | None, runs: dict[str, np.ndarray]) -> dict[str, Any]:
    """How many samples calibrated the ranges; with a declared batch (see ``edgec.data``), also how
    they filled the runs of the model."""
    used = len(next(iter(runs.values())))
    if not isinstance(data, Dataset) or data.batch == 1:
        return {"calibration_samples": used}
    samples = min(data.samples, used * data.batch)
    grouping = {"batch": data.batch, "runs": used, "repeated": used * data.batch - samples}
    return {"calibration_samples": samples, "calibration_runs": grouping}


def _first_reasons(plan: Plan, count: int = 3) -> str:
    return "; ".join(f"{name}: {reason}" for name, reason in list(plan.refused.items())[:count])


def _plan_stats(plan: Plan, prepared: EdgeGraph) -> dict[str, Any]:
    ops = {node.name: node.op for node in prepared.nodes}
    precision: dict[str, str] = {}
    for name, node in plan.nodes.items():
        precision[name] = "int8" if node.op in COMPUTE_OPS else "int8 (shared scale)"
    for name, (producer, _, _) in plan.folds.items():
        precision[name] = f"folded into {producer.name}"
    float_nodes = []
    for name, reason in sorted(plan.refused.items()):
        precision.setdefault(name, "float")
        float_nodes.append({"node": name, "op": ops.get(name, "?"), "reason": reason})
    return {
        "precision": dict(sorted(precision.items())),
        "float_nodes": float_nodes,
        "quantized": sum(1 for n in plan.nodes.values() if n.op in COMPUTE_OPS),
        "folded_activations": len(plan.folds),
    }
