"""Per-layer quantization sensitivity and the mixed-precision search behind ``quantize{budget=...}``.

Sensitivity of a layer = the output error (or accuracy drop) when only that layer is int8 and the
rest of the graph stays float. The mixed-precision search keeps the ``k`` most sensitive layers in
float for the smallest ``k`` whose full int8 variant meets the budget (binary search on ``k``,
assuming the metric falls as more layers stay float, then a linear check upwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.passes.common import budget_metric
from edgec.passes.quantization.calibration import METHODS, check_calibration
from edgec.passes.quantization.qdq import COMPUTE_OPS, Plan, make_plan
from edgec.passes.quantization.static import Evaluator, build_int8, calibrate_plan, prepare
from edgec.pm import Pass, PassContext, PassResult, register

Builder = Callable[[frozenset[str]], tuple[EdgeGraph, Plan]]


def layers_of(plan: Plan) -> list[str]:
    """The layers sensitivity ranks: quantized compute nodes (not scale-sharing reshapes)."""
    return [name for name, node in plan.nodes.items() if node.op in COMPUTE_OPS]


def layer_sensitivity(
    build: Builder, layers: list[str], evaluator: Evaluator, kind: str
) -> list[dict[str, Any]]:
    """One row per layer, most sensitive first: ``node``, ``op``, ``metric`` and the error report."""
    rows = []
    for layer in layers:
        graph, plan = build(frozenset(name for name in layers if name != layer))
        report = evaluator.measure(graph)
        rows.append(
            {
                "node": layer,
                "op": plan.nodes[layer].op if layer in plan.nodes else "?",
                "metric": evaluator.metric(report, kind),
                "relative_error": report["error"]["relative"],
                "max_abs_error": report["error"]["max_abs"],
            }
        )
    rows.sort(key=lambda row: -row["metric"])
    return rows


def format_table(rows: list[dict[str, Any]], kind: str) -> str:
    """The sensitivity table as aligned text."""
    header = f"{'layer':<32} {'op':<18} {kind:>12} {'rel. error':>12} {'max abs':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['node'][:32]:<32} {row['op']:<18} {row['metric']:>12.5g} "
            f"{row['relative_error']:>12.5g} {row['max_abs_error']:>12.5g}"
        )
    return "\n".join(lines)


def search_mixed_precision(
    build: Builder, layers: list[str], evaluator: Evaluator, kind: str, budget: float
) -> tuple[EdgeGraph, Plan, dict[str, Any], dict[str, Any]]:
    """The int8 variant with the fewest float layers that meets ``budget``; returns the graph, its
    plan, its measurement and a summary (``met``, ``kept_float``, ``table``)."""
    graph, plan = build(frozenset())
    report = evaluator.measure(graph)
    value = evaluator.metric(report, kind)
    summary: dict[str, Any] = {"metric": kind, "limit": budget, "all_int8": value}
    if value <= budget:
        return graph, plan, report, {**summary, "value": value, "met": True, "kept_float": []}
    table = layer_sensitivity(build, layers, evaluator, kind)
    order = [row["node"] for row in table]
    cache: dict[int, tuple[EdgeGraph, Plan, dict[str, Any], float]] = {}

    def variant(count: int) -> tuple[EdgeGraph, Plan, dict[str, Any], float]:
        if count not in cache:
            g, p = build(frozenset(order[:count]))
            r = evaluator.measure(g)
            cache[count] = (g, p, r, evaluator.metric(r, kind))
        return cache[count]

    low, high = 1, len(order)
    while low < high:
        middle = (low + high) // 2
        if variant(middle)[3] <= budget:
            high = middle
        else:
            low = middle + 1
    count = low
    while count < len(order) and variant(count)[3] > budget:
        count += 1
    graph, plan, report, value = variant(count)
    summary.update(
        value=value,
        met=value <= budget,
        kept_float=order[:count],
        table=[{k: row[k] for k in ("node", "op", "metric")} for row in table],
    )
    return graph, plan, report, summary


@register
@dataclass(frozen=True)
class QuantizationSensitivity(Pass):
    """Measures each layer's int8 sensitivity (error when only that layer is int8) and reports a table."""

    name: ClassVar[str] = "quantization-sensitivity"
    lossless: ClassVar[bool] = True
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    symmetric_activations: bool = False
    metric: Literal["auto", "accuracy", "error"] = "auto"

    def __post_init__(self) -> None:
        if self.calibration not in METHODS:
            raise EdgecError(
                f"unknown calibration method '{self.calibration}'; choose one of {', '.join(METHODS)}"
            )

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        # Analysis only: the graph the pipeline carries on with is left untouched.
        prepared, _ = prepare(graph.copy(), ctx, 13, fold_batchnorm=True)
        samples = check_calibration(ctx.calibration, prepared, ctx.warn)
        kind = budget_metric(self.metric, ctx.evaluation)
        symmetric = self.symmetric_activations

        plan = make_plan(prepared.copy(), frozenset(), symmetric, capabilities=ctx.capabilities)
        layers = layers_of(plan)
        if not layers:
            raise EdgecError("no quantizable op (Conv, Gemm, MatMul, Add, Mul, Concat, pooling) in the model")
        ranges = calibrate_plan(prepared, plan, samples, self.calibration, self.percentile)

        def build(exclude: frozenset[str]) -> tuple[EdgeGraph, Plan]:
            return build_int8(
                prepared, ranges, exclude, symmetric, self.per_channel, capabilities=ctx.capabilities
            )

        evaluator = Evaluator(prepared, samples, ctx.evaluation if kind == "accuracy" else None)
        rows = layer_sensitivity(build, layers, evaluator, kind)
        return PassResult(
            graph, changed=False, stats={"metric": kind, "table": rows, "text": format_table(rows, kind)}
        )
