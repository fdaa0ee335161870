"""The ``prune-channels`` pass: structured pruning over channel dependency groups.

Pipeline form: ``prune-channels{ratio=0.3,criterion=l1,scope=layer}``. Each group (see
:mod:`edgec.passes.pruning.groups`) loses its least important channels in every member: the
producing layers' weight rows, the consuming layers' weight columns, per-channel parameters,
split sizes and reshape targets, so the saved model has smaller tensors and the same outputs'
shapes. With ``budget`` (an accuracy drop, or a relative error without labelled data) or
``target_macs``/``target_bytes`` (fractions of the model's), per-group ratios are chosen from a
sensitivity table instead (:mod:`edgec.passes.pruning.sensitivity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, graph_cost, static_shape
from edgec.passes.common import Evaluator, error_samples
from edgec.passes.pruning.compensation import channel_means, pruned_copy
from edgec.passes.pruning.groups import ChannelGroups
from edgec.passes.pruning.selection import (
    CRITERIA,
    choose,
    default_round_to,
    global_ratios,
    removal_counts,
    skipped_units,
    unit_scores,
)
from edgec.passes.pruning.sensitivity import Variants, search_budget
from edgec.pm import Pass, PassContext, PassResult, register

DEFAULT_RATIO = 0.3


def left_alone(
    groups: ChannelGroups, scored: np.ndarray, locked: np.ndarray, criterion: str
) -> list[dict[str, Any]]:
    """Groups whose channels (some or all) must stay, and why."""
    entries = []
    for group in groups.groups:
        units = group.units
        reasons = list(group.reasons)
        if locked[units].any():
            reasons.append("skipped (skip option)")
        if (~scored[units] & ~group.blocked).any():
            reasons.append(f"criterion {criterion} has nothing to rank these channels by")
        staying = int((group.blocked | locked[units] | ~scored[units]).sum())
        if staying:
            entries.append(
                {
                    "group": group.index,
                    "origins": group.origins,
                    "stay": staying,
                    "of": len(units),
                    "reason": "; ".join(reasons),
                }
            )
    return entries


def shortfalls(
    groups: ChannelGroups, counts: dict[int, int], removed: np.ndarray, round_to: int
) -> list[dict[str, Any]]:
    """Groups that lost fewer channels than their ratio asked, and why."""
    notes = []
    for group in groups.groups:
        asked, done = counts.get(group.index, 0), int(removed[group.units].sum())
        if done < asked:
            reason = (
                f"removes {done} of the {asked} channels asked: the spaces it shares must stay even "
                f"(grouped Conv, shuffle) and at multiples of {round_to}, and allow no more"
            )
            notes.append({"group": group.index, "origins": group.origins, "reason": reason})
    return notes


def layer_changes(before: EdgeGraph, after: EdgeGraph, groups: ChannelGroups) -> list[dict[str, Any]]:
    """Per node whose weights or MACs changed: channels, MACs, parameters and weight bytes
    before and after (``[before, after]`` pairs)."""
    old = {n.name: n for n in graph_cost(before).nodes}
    new = {n.name: n for n in graph_cost(after).nodes}
    nodes_before = {n.name: n for n in before.nodes}
    nodes_after = {n.name: n for n in after.nodes}
    rows = []
    for name, cost in old.items():
        changed = new.get(name)
        if changed is None or (cost.macs, cost.params) == (changed.macs, changed.params):
            continue
        row: dict[str, Any] = {"node": name, "op": cost.op}
        for key, index, side in (("in_channels", 0, "inputs"), ("out_channels", 0, "outputs")):
            tensor = getattr(nodes_before[name], side)[index]
            space = groups.spaces.get(tensor.name)
            if space is not None:
                shape = static_shape(getattr(nodes_after[name], side)[index])
                row[key] = [space.channels, shape[space.axis] // space.block if shape else None]
        row.update(
            macs=[cost.macs, changed.macs],
            params=[cost.params, changed.params],
            weight_bytes=[cost.weight_bytes, changed.weight_bytes],
        )
        rows.append(row)
    return rows


def summary(before: EdgeGraph, after: EdgeGraph) -> dict[str, Any]:
    """MACs, parameters and weight bytes of the whole model, before and after, and the reduction."""
    old, new = graph_cost(before), graph_cost(after)
    return {
        "macs": [old.macs, new.macs],
        "params": [old.params, new.params],
        "weight_bytes": [old.weight_bytes, new.weight_bytes],
        "mac_reduction": round(1 - new.macs / old.macs, 4) if old.macs else 0.0,
        "param_reduction": round(1 - new.params / old.params, 4) if old.params else 0.0,
    }


@register
@dataclass(frozen=True)
class PruneChannels(Pass):
    """Removes the least important channels of each dependency group from all of its members."""

    name: ClassVar[str] = "prune-channels"
    lossless: ClassVar[bool] = False
    in_place: ClassVar[bool] = False
    ratio: float | None = None
    criterion: Literal["l1", "l2", "bn-gamma"] = "l1"
    scope: Literal["layer", "global"] = "layer"
    skip: tuple[str, ...] = ()
    round_to: int | None = None
    budget: float | None = None
    budget_metric: Literal["auto", "accuracy", "error"] = "auto"
    target_macs: float | None = None
    target_bytes: float | None = None
    max_ratio: float = 0.9
    compensate: bool = True

    @property
    def budgeted(self) -> bool:
        return self.budget is not None or self.target_macs is not None or self.target_bytes is not None

    def __post_init__(self) -> None:
        if self.ratio is not None and self.budgeted:
            raise EdgecError(
                "prune-channels takes either ratio (one ratio for every group) or budget/target_macs/"
                "target_bytes (per-group ratios chosen up to max_ratio), not both"
            )
        ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
        if not 0 <= ratio < 1:
            raise EdgecError(f"prune-channels ratio {ratio} must be in [0, 1): 0.3 removes 30% of channels")
        if self.criterion not in CRITERIA:
            raise EdgecError(f"unknown criterion '{self.criterion}'; choose one of {', '.join(CRITERIA)}")
        if self.scope not in ("layer", "global"):
            raise EdgecError(f"unknown scope '{self.scope}'; choose layer or global")
        if self.round_to is not None and self.round_to < 1:
            raise EdgecError(f"round_to must be at least 1, got {self.round_to}")
        if self.budget is not None and self.budget < 0:
            raise EdgecError(f"budget must be >= 0 (0.01 = one point of accuracy), got {self.budget}")
        for key in ("target_macs", "target_bytes"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1:
                raise EdgecError(f"{key} is the fraction of the model's to keep, in (0, 1]; got {value}")
        if not 0 < self.max_ratio < 1:
            raise EdgecError(f"max_ratio must be in (0, 1), got {self.max_ratio}")

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        groups = ctx.analyses.get("channel-groups", graph)
        locked = skipped_units(graph, groups, self.skip)
        if self.round_to is not None:
            round_to, source = self.round_to, "option"
        else:
            round_to = default_round_to(ctx.capabilities)
            source = f"target {ctx.capabilities.target}" if ctx.capabilities is not None else "no target"
        scores, scored = unit_scores(graph, groups, self.criterion)
        available = ~groups.unit_fixed & ~locked & scored
        samples, error_data = error_samples(graph, ctx)
        evaluator = Evaluator(graph, samples, ctx.evaluation, labels=("original", "pruned"))
        # Means of random inputs' activations say nothing of real data's: compensate on real data only.
        compensating = self.compensate and error_data == "calibration"
        means = channel_means(graph, groups, samples) if compensating else None
        stats: dict[str, Any] = {
            "criterion": self.criterion,
            "scope": self.scope,
            "round_to": round_to,
            "round_to_from": source,
            "groups": len(groups.groups),
            "compensation": "calibration data" if compensating else "off",
        }
        if self.budgeted:
            variants = Variants(graph, groups, scores, available, round_to, evaluator, means)
            ratios, stats["budget"] = search_budget(variants, self, ctx)
        elif self.scope == "global":
            ratios = global_ratios(groups, scores, available, self._ratio())
        else:
            ratios = {group.index: self._ratio() for group in groups.groups}
        counts, notes = removal_counts(groups, available, ratios, round_to)
        removed = choose(groups, scores, available, counts, round_to)
        notes += shortfalls(groups, counts, removed, round_to)
        stats["left_alone"] = left_alone(groups, scored, locked, self.criterion) + notes
        stats["channels_removed"] = int(removed.sum())
        if not removed.any():
            return PassResult(graph, changed=False, stats=stats)
        pruned = pruned_copy(graph, groups, removed, means)
        stats["pruned_groups"] = len({int(g.index) for g in groups.groups if removed[g.units].any()})
        stats.update(summary(graph, pruned))
        stats["layers"] = layer_changes(graph, pruned, groups)
        stats["error_data"] = error_data
        stats.update(evaluator.measure(pruned))
        return PassResult(pruned, changed=True, stats=stats)

    def _ratio(self) -> float:
        return DEFAULT_RATIO if self.ratio is None else self.ratio
