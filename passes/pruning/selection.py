"""Which units channel pruning removes: importance by a criterion, how many per group (from a
ratio, per layer or global, rounded to ``round_to``), and a greedy choice that keeps every
balanced space balanced and every space at least one channel wide."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgec.capabilities import Capabilities
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.passes.pruning.groups import NORMALIZES, PRODUCES, ChannelGroups, Group
from edgec.passes.pruning.rules import RULES, weight_rows

CRITERIA = ("l1", "l2", "bn-gamma")


def default_round_to(capabilities: Capabilities | None) -> int:
    """Channel multiple the target's float kernels like: its fp32 vector lanes (1 when unknown or
    scalar), so that a pruned layer still fills whole vector registers."""
    if capabilities is None or capabilities.vector_bits <= 0:
        return 1
    return max(1, capabilities.vector_bits // 32)


def unit_scores(graph: EdgeGraph, groups: ChannelGroups, criterion: str) -> tuple[np.ndarray, np.ndarray]:
    """Importance of every unit and whether the criterion could score it.

    ``l1``: sum over the layers producing the unit's channels of the mean ``|w|`` of the channel's
    weights (means, so that layers of different fan-in weigh alike); ``l2``: the same with the root
    mean square; ``bn-gamma``: sum of ``|gamma|`` of the BatchNormalizations that normalize it.
    """
    nodes = {node.name: node for node in graph.nodes}
    score = np.zeros(groups.unit_count)
    scored = np.zeros(groups.unit_count, bool)
    for use in groups.uses:
        node = nodes[use.node]
        space = groups.spaces[use.tensor]
        if criterion in ("l1", "l2") and use.role == PRODUCES:
            rows = weight_rows(node).astype(np.float64)
            value = np.abs(rows).mean(axis=1) if criterion == "l1" else np.sqrt((rows**2).mean(axis=1))
        elif criterion == "bn-gamma" and use.role == NORMALIZES and node.op == "BatchNormalization":
            gamma = np.abs(RULES[node.op].scale(node).astype(np.float64))
            value = gamma.reshape(space.channels, space.block).mean(axis=1)
        else:
            continue
        units = groups.units(use.tensor)
        np.add.at(score, units, value)
        scored[units] = True
    return score, scored


@dataclass
class Selection:
    """The units to remove, and the groups (or parts of them) left alone, with the reason."""

    removed: np.ndarray
    left_alone: list[dict[str, Any]] = field(default_factory=list)


def _nearest(value: float) -> int:
    """``value`` rounded half up (Python's ``round`` rounds half to even)."""
    return math.floor(value + 0.5)


def _kept(units: int, ratio: float, round_to: int) -> int:
    """Channels a group of ``units`` keeps at ``ratio``: the nearest multiple of ``round_to``, at
    least ``round_to`` (and at least one channel)."""
    remaining = units * (1.0 - ratio)
    if round_to > 1:
        return max(round_to, _nearest(remaining / round_to) * round_to)
    return max(1, _nearest(remaining))


def removal_counts(
    groups: ChannelGroups, available: np.ndarray, ratios: dict[int, float], round_to: int
) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """Units to remove per group at the given per-group ratios, and notes on groups that keep
    more than asked (or everything), with the reason."""
    counts: dict[int, int] = {}
    notes: list[dict[str, Any]] = []
    for group in groups.groups:
        ratio = ratios.get(group.index, 0.0)
        if ratio <= 0:
            continue
        size, free = len(group.units), int(available[group.units].sum())
        # Units that hold several channels each (a shuffle) need fewer of them per multiple.
        kept = _kept(size, ratio, round_to // math.gcd(round_to, group.channels_per_unit))
        reason = None
        if free == 0:
            continue  # listed with its reasons by the caller
        if _nearest(size * (1 - ratio)) < 1:
            reason = f"ratio {ratio:g} would remove every channel; keeps {min(kept, size)}"
        elif kept >= size:
            rounding = f" rounded to a multiple of {round_to}" if round_to > 1 else ""
            reason = f"ratio {ratio:g} of {size} channels{rounding} removes none"
        count = min(size - kept, free)
        if count > 0:
            counts[group.index] = count
        if reason is not None:
            notes.append({"group": group.index, "origins": group.origins, "reason": reason})
    return counts, notes


def global_ratios(
    groups: ChannelGroups, scores: np.ndarray, available: np.ndarray, ratio: float
) -> dict[int, float]:
    """Per-group ratios of one global ranking: each group's scores divided by their mean (layers'
    magnitudes differ), and the lowest ``ratio`` of all prunable groups' channels removed."""
    normalized = np.full(groups.unit_count, np.inf)
    group_of = np.full(groups.unit_count, -1)
    total = 0
    for group in groups.groups:
        free = group.units[available[group.units]]
        if len(free) == 0:
            continue
        total += len(group.units)
        mean = scores[free].mean()
        normalized[free] = scores[free] / mean if mean > 0 else 0.0
        group_of[free] = group.index
    count = _nearest(ratio * total)
    lowest = np.argsort(normalized, kind="stable")[:count]
    lowest = lowest[np.isfinite(normalized[lowest])]
    taken = np.bincount(group_of[lowest], minlength=len(groups.groups))
    return {g.index: taken[g.index] / len(g.units) for g in groups.groups if taken[g.index]}


class _Parts:
    """Every space as parts whose channels can go up to a limit (one less than their size), the
    parts of balanced spaces, which must lose as many channels each, and the parts of each space."""

    def __init__(self, groups: ChannelGroups) -> None:
        balanced = dict(groups.balances)
        unit_list, part_list, limits, self.balanced = [], [], [], []
        self.spaces: list[tuple[np.ndarray, int]] = []
        for tensor, space in groups.spaces.items():
            parts = balanced.get(tensor, 1)
            size = space.channels // parts
            first = len(limits)
            unit_list.append(groups.units(tensor))
            part_list.append(first + np.arange(space.channels) // max(size, 1))
            limits.extend([size - 1] * parts)
            self.spaces.append((first + np.arange(parts), space.channels))
            if parts > 1:
                self.balanced.append(first + np.arange(parts))
        units = np.concatenate(unit_list) if unit_list else np.zeros(0, np.int64)
        parts_of = np.concatenate(part_list) if part_list else np.zeros(0, np.int64)
        pairs, self._counts = np.unique(np.stack([units, parts_of]), axis=1, return_counts=True)
        self._units, self._parts = pairs
        self._bounds = np.searchsorted(self._units, np.arange(groups.unit_count + 1))
        self.limit = np.asarray(limits, dtype=np.int64)
        self.used = np.zeros(len(limits), np.int64)

    def of(self, unit: int) -> tuple[np.ndarray, np.ndarray]:
        """The parts a unit takes channels from, and how many from each."""
        start, stop = self._bounds[unit], self._bounds[unit + 1]
        return self._parts[start:stop], self._counts[start:stop]

    def fits(self, unit: int, limit: np.ndarray) -> bool:
        parts, counts = self.of(unit)
        return bool(np.all(self.used[parts] + counts <= limit[parts]))

    def take(self, unit: int, sign: int = 1) -> None:
        parts, counts = self.of(unit)
        self.used[parts] += sign * counts


def _balanced_limit(parts: _Parts, fraction: float) -> np.ndarray:
    """Limits with each part of a balanced space capped at ``fraction`` of its size (rounded to
    the nearest channel): parts that all lose the same fraction stay even, nested balanced spaces
    (a grouped Conv reading a Concat of grouped Convs) nearly so."""
    limit = parts.limit.copy()
    for ids in parts.balanced:
        limit[ids] = np.minimum(limit[ids], _nearest(fraction * (parts.limit[ids[0]] + 1)))
    return limit


def _fill(parts: _Parts, chosen: list[int], candidates: np.ndarray, limit: np.ndarray) -> None:
    """Adds the least important candidates that raise the short parts of uneven balanced spaces
    without raising any part above its space's fullest one."""
    while True:
        uneven = [ids for ids in parts.balanced if parts.used[ids].max() > parts.used[ids].min()]
        if not uneven:
            return
        cap = limit.copy()
        short = set()
        for ids in parts.balanced:
            cap[ids] = np.minimum(cap[ids], parts.used[ids].max())
        for ids in uneven:
            short.update(ids[parts.used[ids] < parts.used[ids].max()].tolist())
        taken = set(chosen)
        added = False
        for unit in candidates:
            unit = int(unit)
            if unit in taken or not short & set(parts.of(unit)[0].tolist()) or not parts.fits(unit, cap):
                continue
            parts.take(unit)
            chosen.append(unit)
            added = True
            break
        if not added:
            return


def _rebalance(parts: _Parts, chosen: list[int], scores: np.ndarray) -> list[int]:
    """Puts back the most important chosen units until every balanced space is even."""
    chosen = sorted(chosen, key=lambda u: scores[u])
    while True:
        uneven = next((ids for ids in parts.balanced if parts.used[ids].max() > parts.used[ids].min()), None)
        if uneven is None:
            return chosen
        floor = parts.used[uneven].min()
        over = set(uneven[parts.used[uneven] > floor].tolist())
        unit = next(u for u in reversed(chosen) if over & set(parts.of(u)[0].tolist()))
        parts.take(unit, -1)
        chosen.remove(unit)


def _round_spaces(parts: _Parts, chosen: list[int], scores: np.ndarray, round_to: int) -> list[int]:
    """Puts back the most important chosen units until every space that loses channels keeps a
    multiple of ``round_to`` (the halves of a Split, the inputs of a Concat, not just the group)."""
    chosen = sorted(chosen, key=lambda u: scores[u])
    while True:
        short = None
        for ids, channels in parts.spaces:
            removed = int(parts.used[ids].sum())
            if removed and (channels - removed) % round_to:
                short = set(ids.tolist())
                break
        if short is None:
            return chosen
        unit = next(u for u in reversed(chosen) if short & set(parts.of(u)[0].tolist()))
        parts.take(unit, -1)
        chosen.remove(unit)


def choose(
    groups: ChannelGroups,
    scores: np.ndarray,
    available: np.ndarray,
    counts: dict[int, int],
    round_to: int = 1,
) -> np.ndarray:
    """The units to remove: per group, the ``counts`` least important available units that fit the
    parts' limits (balanced spaces evenly, every space at a multiple of ``round_to``); returns a
    boolean per unit."""
    parts = _Parts(groups)
    removed = np.zeros(groups.unit_count, bool)
    for group in groups.groups:
        count = counts.get(group.index, 0)
        if count == 0:
            continue
        candidates = _candidates(group, scores, available)
        start = parts.used.copy()
        best: tuple[list[int], np.ndarray] = ([], start)
        # Evening out nested balanced spaces can put every unit back; a smaller count may fit.
        for attempt in dict.fromkeys(max(1, count * k // 4) for k in (4, 3, 2, 1)):
            parts.used = start.copy()
            chosen = _attempt(parts, group, candidates, scores, attempt, round_to)
            if len(chosen) > len(best[0]):
                best = (chosen, parts.used.copy())
            if len(chosen) == attempt:
                break
        parts.used = best[1]
        removed[best[0]] = True
    return removed


def _attempt(
    parts: _Parts, group: Group, candidates: np.ndarray, scores: np.ndarray, count: int, round_to: int
) -> list[int]:
    """Takes up to ``count`` candidates within the limits, then evens out balanced spaces and
    rounds every space (both by putting units back)."""
    limit = _balanced_limit(parts, count / len(group.units))
    chosen: list[int] = []
    for unit in candidates:
        if len(chosen) == count:
            break
        if parts.fits(unit, limit):
            parts.take(unit)
            chosen.append(int(unit))
    _fill(parts, chosen, candidates, parts.limit)
    chosen = _rebalance(parts, chosen, scores)
    while round_to > 1:
        # Both only put units back, so this ends.
        kept = len(chosen)
        chosen = _rebalance(parts, _round_spaces(parts, chosen, scores, round_to), scores)
        if len(chosen) == kept:
            break
    return chosen


def _candidates(group: Group, scores: np.ndarray, available: np.ndarray) -> np.ndarray:
    free = group.units[available[group.units]]
    return free[np.argsort(scores[free], kind="stable")]


def skipped_units(graph: EdgeGraph, groups: ChannelGroups, patterns: tuple[str, ...]) -> np.ndarray:
    """Units of the outputs of the nodes ``patterns`` name (``fnmatch``): a skipped layer keeps
    its output channels (the groups it creates), and loses input channels only if the layers
    before it are pruned.

    Raises:
        EdgecError: for a pattern that names no node.
    """
    locked = np.zeros(groups.unit_count, bool)
    for pattern in patterns:
        nodes = [n for n in graph.nodes if fnmatch.fnmatchcase(n.name, pattern)]
        if not nodes:
            raise EdgecError(f"skip pattern '{pattern}' names no node of the model")
        for node in nodes:
            for tensor in node.outputs:
                if tensor.name in groups.spaces:
                    locked[groups.units(tensor.name)] = True
    return locked
