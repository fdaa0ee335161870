"""What the pass families share: the rule-set pass, on-demand shape inference, and measuring a
lossy pass's variants of a graph against it (output error, accuracy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx

from edgec.data import Dataset, as_dataset
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult
from edgec.rewrite import RuleSet
from edgec.verify import accuracy, error_metrics, random_inputs, run_onnx_batch

# Error is measured on at most this many samples (enough for a stable mean).
ERROR_SAMPLES = 64
# Seeded random samples for the error when a data-free pass is given no calibration data.
RANDOM_SAMPLES = 8


def refresh_shapes(graph: EdgeGraph, ctx: PassContext, ops: frozenset[str] | set[str]) -> None:
    """Brings the inferred shapes up to date (the cached ``shapes`` analysis) when a node of
    ``ops`` is present; when inference fails, shapes stay as they were, so the checks that need
    them refuse instead of guessing."""
    if any(node.op in ops for node in graph.nodes):
        ctx.analyses.get("shapes", graph)


@dataclass(frozen=True)
class RewritePass(Pass):
    """Base of passes that apply one rule set: ``rules`` is the data, the driver is shared.

    Subclasses set ``rules``, the stats key ``counter`` (``fused``, ``merged``, ...) and the ops
    whose checks need inferred shapes (``needs_shapes``).
    """

    rules: ClassVar[RuleSet]
    counter: ClassVar[str] = "applied"
    needs_shapes: ClassVar[frozenset[str]] = frozenset()

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        refresh_shapes(graph, ctx, self.needs_shapes)
        report = self.rules.apply(graph)
        return PassResult(
            graph, changed=report.total > 0, stats={self.counter: report.total, **report.stats()}
        )


def error_samples(graph: EdgeGraph, ctx: PassContext) -> tuple[dict[str, np.ndarray], str]:
    """Samples (leading sample axis) for measuring a lossy pass's error, and where they come from:
    the calibration data if given, else ``RANDOM_SAMPLES`` seeded random inputs."""
    if ctx.calibration is not None:
        return as_dataset(ctx.calibration, graph, where="calibration data").runs, "calibration"
    draws = [random_inputs(graph, seed=ctx.seed + i) for i in range(RANDOM_SAMPLES)]
    return {name: np.stack([d[name] for d in draws]) for name in draws[0]}, "random"


@dataclass
class Evaluator:
    """Measures variants of a reference graph: output error on samples and, with labelled
    evaluation data, top-1 accuracy (``labels`` name the reference and the variant in reports)."""

    reference: EdgeGraph
    samples: dict[str, np.ndarray]
    evaluation: Dataset | dict[str, np.ndarray] | None = None
    labels: tuple[str, str] = ("original", "variant")
    _reference_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    _reference_accuracy: float | None = None

    def __post_init__(self) -> None:
        count = len(next(iter(self.samples.values())))
        self.samples = {k: v[: min(count, ERROR_SAMPLES)] for k, v in self.samples.items()}
        model = self.reference.to_onnx()
        self._reference_outputs = run_onnx_batch(model, self.samples, f"the {self.labels[0]} model")
        if self.evaluation is not None:
            self._reference_accuracy = self._accuracy(model, f"the {self.labels[0]} model")

    def _accuracy(self, model: onnx.ModelProto, purpose: str) -> float:
        data = as_dataset(self.evaluation, self.reference, where="evaluation data", labelled=True)
        first = model.graph.output[0].name
        outputs = run_onnx_batch(model, data.runs, purpose)[first]
        return accuracy(data.rows(outputs, f"output '{first}'"), data.labels)

    def measure(self, graph: EdgeGraph) -> dict[str, Any]:
        """``error`` (max/mean abs, cosine, and ``relative`` = mean|y' - y| / mean|y|) and, with
        evaluation data, ``accuracy`` (reference, variant, and the drop as a fraction)."""
        model = graph.to_onnx()
        outputs = run_onnx_batch(model, self.samples, f"a {self.labels[1]} model")
        count = len(next(iter(self.samples.values())))
        metrics = error_metrics(self._reference_outputs, outputs, samples=count)
        scale = float(np.mean([np.abs(v).mean() for v in self._reference_outputs.values()]))
        report: dict[str, Any] = {
            "error": {**metrics.as_dict(), "relative": float(f"{metrics.mean_abs / max(scale, 1e-12):.6g}")}
        }
        if self.evaluation is not None:
            variant = self._accuracy(model, f"a {self.labels[1]} model")
            reference_label, variant_label = self.labels
            report["accuracy"] = {
                reference_label: round(self._reference_accuracy, 6),
                variant_label: round(variant, 6),
                "drop": round(self._reference_accuracy - variant, 6),
            }
        return report

    def metric(self, report: dict[str, Any], kind: str) -> float:
        """The budgeted number: accuracy drop (fraction) or relative output error."""
        return float(report["accuracy"]["drop"]) if kind == "accuracy" else float(report["error"]["relative"])


def budget_metric(kind: str, evaluation: dict | None) -> str:
    """``accuracy`` (needs labelled evaluation data) or ``error``; ``auto`` picks accuracy when
    evaluation data is given."""
    if kind == "auto":
        return "accuracy" if evaluation is not None else "error"
    if kind == "accuracy" and evaluation is None:
        raise EdgecError("an accuracy budget needs labelled evaluation data: pass --eval eval.npz")
    if kind not in ("accuracy", "error"):
        raise EdgecError(f"unknown budget metric '{kind}'; choose auto, accuracy or error")
    return kind
