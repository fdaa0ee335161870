"""The body every substitution pass shares: apply its rules, then report what they cost and saved.

Stats: ``substituted`` (per rule), refusals with reasons, ``macs`` and ``params`` as ``[before,
after]``, and the output error of the new graph against the old one on the calibration data
(seeded random inputs without it; ``error.relative`` = mean |y' - y| / mean |y|).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgec.ir import EdgeGraph, graph_cost, infer_shapes
from edgec.pm import Pass, PassContext, PassResult
from edgec.rewrite import RuleSet
from edgec.verify import error_metrics, random_inputs, run_onnx_batch

# Samples the output error is measured on.
ERROR_SAMPLES = 32


def output_error(before: EdgeGraph, after: EdgeGraph, ctx: PassContext) -> dict[str, Any]:
    """Error of ``after`` against ``before`` on calibration samples (or seeded random inputs)."""
    if ctx.calibration is not None:
        names = [t.name for t in before.inputs]
        samples = {name: ctx.calibration[name][:ERROR_SAMPLES] for name in names}
        source = "calibration"
    else:
        draws = [random_inputs(before, seed=ctx.seed + i) for i in range(8)]
        samples = {name: np.stack([d[name] for d in draws]) for name in draws[0]}
        source = "random"
    reference = run_onnx_batch(before.to_onnx(), samples)
    candidate = run_onnx_batch(after.to_onnx(), samples)
    metrics = error_metrics(reference, candidate, samples=len(next(iter(samples.values()))))
    scale = float(np.mean([np.abs(v).mean() for v in reference.values()]))
    return {
        **metrics.as_dict(),
        "relative": float(f"{metrics.mean_abs / max(scale, 1e-12):.6g}"),
        "data": source,
    }


@dataclass(frozen=True)
class SubstitutionPass(Pass):
    """Base of the substitution passes: subclasses build their rule set from their options."""

    lossless: ClassVar[bool] = False

    def rule_set(self) -> RuleSet:
        raise NotImplementedError

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        infer_shapes(graph)
        before = graph.copy()
        cost = graph_cost(before)
        report = self.rule_set().apply(graph)
        stats: dict[str, Any] = {"substituted": report.total, **report.stats()}
        if report.total:
            infer_shapes(graph)
            after = graph_cost(graph)
            stats["macs"] = [cost.macs, after.macs]
            stats["params"] = [cost.params, after.params]
            stats["error"] = output_error(before, graph, ctx)
        return PassResult(graph, changed=report.total > 0, stats=stats)
