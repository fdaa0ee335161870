"""Channel-pruning sensitivity per group (``prune-sensitivity``) and the budgeted search behind
``prune-channels{budget=...}`` and ``prune-channels{target_macs=...}``.

The sensitivity of a group at a ratio is the metric (the accuracy drop on labelled data, else the
relative output error) when only that group is pruned at that ratio. The budgeted search is the
sensitivity-threshold method (Distiller's): for a threshold ``t`` every group takes the largest
ratio whose sensitivity is at most ``t``; raising ``t`` prunes more. A binary search over the
thresholds the table holds, measuring the whole pruned model at each step, finds the largest ``t``
within an accuracy budget, or the smallest that reaches a MACs or weight-bytes target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, graph_cost
from edgec.passes.common import Evaluator, budget_metric, error_samples
from edgec.passes.pruning.compensation import channel_means, pruned_copy
from edgec.passes.pruning.groups import ChannelGroups
from edgec.passes.pruning.selection import (
    CRITERIA,
    choose,
    default_round_to,
    removal_counts,
    skipped_units,
    unit_scores,
)
from edgec.pm import Pass, PassContext, PassResult, register

if TYPE_CHECKING:
    from edgec.passes.pruning.channels import PruneChannels

# Ratios the budgeted search chooses from (up to ``max_ratio``); ratios that round to the same
# channel count are built and measured once.
SEARCH_GRID = tuple(round(0.05 * step, 2) for step in range(1, 19))


class Variants:
    """Pruned variants of one graph at per-group ratios, built and measured once each."""

    def __init__(
        self,
        graph: EdgeGraph,
        groups: ChannelGroups,
        scores: np.ndarray,
        available: np.ndarray,
        round_to: int,
        evaluator: Evaluator,
        means: dict[str, np.ndarray] | None,
    ) -> None:
        self.graph, self.groups, self.scores, self.available = graph, groups, scores, available
        self.round_to, self.evaluator, self.means = round_to, evaluator, means
        cost = graph_cost(graph)
        self.macs, self.weight_bytes = cost.macs, cost.weight_bytes
        self._measured: dict[bytes, dict[str, Any]] = {}

    def prunable(self) -> list[int]:
        """Groups with at least one channel that can go."""
        return [g.index for g in self.groups.groups if self.available[g.units].any()]

    def removed_fractions(self, ratios: dict[int, float]) -> dict[str, float]:
        """What each group loses at ``ratios``, by its origins (ratios that round to the same
        channel count are the same)."""
        counts, _ = removal_counts(self.groups, self.available, ratios, self.round_to)
        groups = self.groups.groups
        return {
            ",".join(groups[g].origins): round(n / len(groups[g].units), 4) for g, n in sorted(counts.items())
        }

    def measure(self, ratios: dict[int, float], kind: str) -> dict[str, Any]:
        """``metric``, ``macs`` and ``weight_bytes`` of the variant pruned at ``ratios``."""
        counts, _ = removal_counts(self.groups, self.available, ratios, self.round_to)
        removed = choose(self.groups, self.scores, self.available, counts, self.round_to)
        key = removed.tobytes()
        if key not in self._measured:
            if not removed.any():
                self._measured[key] = {"metric": 0.0, "macs": self.macs, "weight_bytes": self.weight_bytes}
            else:
                pruned = pruned_copy(self.graph, self.groups, removed, self.means)
                cost = graph_cost(pruned)
                metric = self.evaluator.metric(self.evaluator.measure(pruned), kind)
                self._measured[key] = {"metric": metric, "macs": cost.macs, "weight_bytes": cost.weight_bytes}
        return self._measured[key]


def sensitivity_table(
    variants: Variants, ratios: tuple[float, ...], kind: str, advance: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """One row per prunable group: the metric and the model's MACs at each ratio, that group alone."""
    rows = []
    for index in variants.prunable():
        group = variants.groups.groups[index]
        metrics, macs = {}, {}
        for ratio in ratios:
            measured = variants.measure({index: ratio}, kind)
            metrics[ratio], macs[ratio] = measured["metric"], measured["macs"]
            if advance is not None:
                advance(1)
        rows.append(
            {
                "group": index,
                "origins": group.origins,
                "units": len(group.units),
                "metric": metrics,
                "macs": macs,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], ratios: tuple[float, ...], kind: str) -> str:
    """The sensitivity table as aligned text: the metric per group (rows) and ratio (columns)."""
    header = f"{'group':<6} {'origins':<28} {'units':>6} " + " ".join(
        f"{f'{kind}@{r:g}':>12}" for r in ratios
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        origins = ",".join(row["origins"])
        cells = " ".join(f"{row['metric'][r]:>12.4g}" for r in ratios)
        lines.append(f"{row['group']:<6} {origins[:28]:<28} {row['units']:>6} {cells}")
    return "\n".join(lines)


def _ratios_at(rows: list[dict[str, Any]], threshold: float) -> dict[int, float]:
    chosen = {}
    for row in rows:
        fitting = [r for r, value in row["metric"].items() if value <= threshold]
        if fitting:
            chosen[row["group"]] = max(fitting)
    return chosen


def search_budget(
    variants: Variants, options: PruneChannels, ctx: PassContext
) -> tuple[dict[int, float], dict]:
    """Per-group ratios for ``options``' budget and targets, and a summary for the pass's stats."""
    kind = budget_metric(options.budget_metric, ctx.evaluation)
    grid = tuple(r for r in SEARCH_GRID if r <= options.max_ratio + 1e-9) or (options.max_ratio,)
    advance = ctx.progress("channel-pruning sensitivity", len(variants.prunable()) * len(grid))
    rows = sensitivity_table(variants, grid, kind, advance)
    thresholds = sorted({0.0, *(v for row in rows for v in row["metric"].values())})

    def reaches_targets(threshold: float) -> bool:
        measured = variants.measure(_ratios_at(rows, threshold), kind)
        return (options.target_macs is None or measured["macs"] <= options.target_macs * variants.macs) and (
            options.target_bytes is None
            or measured["weight_bytes"] <= options.target_bytes * variants.weight_bytes
        )

    def within_budget(threshold: float) -> bool:
        return variants.measure(_ratios_at(rows, threshold), kind)["metric"] <= options.budget

    if options.target_macs is not None or options.target_bytes is not None:
        # The smallest threshold that reaches the targets (more pruning only lowers MACs).
        low, high = 0, len(thresholds) - 1
        while low < high:
            middle = (low + high) // 2
            if reaches_targets(thresholds[middle]):
                high = middle
            else:
                low = middle + 1
        chosen = thresholds[low]
    else:
        # The largest threshold within the budget (assuming the metric grows with the threshold).
        low, high = 0, len(thresholds) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if within_budget(thresholds[middle]):
                low = middle
            else:
                high = middle - 1
        chosen = thresholds[low]
    ratios = _ratios_at(rows, chosen)
    measured = variants.measure(ratios, kind)
    summary = {
        "metric": kind,
        "threshold": chosen,
        "value": measured["metric"],
        "macs": [variants.macs, measured["macs"]],
        "weight_bytes": [variants.weight_bytes, measured["weight_bytes"]],
        "ratios": variants.removed_fractions(ratios),
        "table": format_table(rows, grid, kind),
    }
    if options.budget is not None:
        summary.update(limit=options.budget, met=measured["metric"] <= options.budget)
        if not summary["met"]:
            ctx.warn(f"prune-channels: {kind} budget {options.budget} not met ({measured['metric']:.4g})")
    if options.target_macs is not None or options.target_bytes is not None:
        summary["targets_met"] = reaches_targets(chosen)
        if not summary["targets_met"]:
            ctx.warn("prune-channels: the MACs/bytes target is not reached even at max_ratio everywhere")
    return ratios, summary


@register
@dataclass(frozen=True)
class PruneSensitivity(Pass):
    """Measures how much pruning each channel group alone at several ratios costs, as a table."""

    name: ClassVar[str] = "prune-sensitivity"
    lossless: ClassVar[bool] = True
    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    criterion: Literal["l1", "l2", "bn-gamma"] = "l1"
    metric: Literal["auto", "accuracy", "error"] = "auto"
    round_to: int | None = None
    skip: tuple[str, ...] = ()
    compensate: bool = True

    def __post_init__(self) -> None:
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios):
            raise EdgecError(
                f"prune-sensitivity ratios must be in (0, 1), e.g. 0.1:0.3:0.5; got {self.ratios}"
            )
        if self.criterion not in CRITERIA:
            raise EdgecError(f"unknown criterion '{self.criterion}'; choose one of {', '.join(CRITERIA)}")

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        # Analysis only: the graph the pipeline carries on with is left untouched.
        groups = ctx.analyses.get("channel-groups", graph)
        kind = budget_metric(self.metric, ctx.evaluation)
        scores, scored = unit_scores(graph, groups, self.criterion)
        available = ~groups.unit_fixed & ~skipped_units(graph, groups, self.skip) & scored
        round_to = self.round_to or default_round_to(ctx.capabilities)
        samples, data = error_samples(graph, ctx)
        evaluator = Evaluator(graph, samples, ctx.evaluation, labels=("original", "pruned"))
        # As prune-channels: compensation from real (calibration) data only.
        means = channel_means(graph, groups, samples) if self.compensate and data == "calibration" else None
        variants = Variants(graph, groups, scores, available, round_to, evaluator, means)
        advance = ctx.progress("channel-pruning sensitivity", len(variants.prunable()) * len(self.ratios))
        rows = sensitivity_table(variants, tuple(self.ratios), kind, advance)
        table = [
            {
                **row,
                "metric": {str(r): v for r, v in row["metric"].items()},
                "macs": {str(r): v for r, v in row["macs"].items()},
            }
            for row in rows
        ]
        stats = {
            "metric": kind,
            "ratios": list(self.ratios),
            "table": table,
            "text": format_table(rows, tuple(self.ratios), kind),
        }
        return PassResult(graph, changed=False, stats=stats)
