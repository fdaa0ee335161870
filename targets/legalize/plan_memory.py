"""``plan-memory{budget=B}``: chooses how the first stages of a CNN run, trading peak RAM against
recomputed multiply-accumulates, under the target's RAM budget.

The fusions and in-place steps cost nothing (``fuse-conv-pool`` before this pass; element-wise and
concatenation in place, in the runtime-free planner): they always apply. Patch-based execution
(``patch-stages``) costs the halo rows every band recomputes. The candidates are every tensor that
ends a stage that can run in row bands (:func:`~.patching.plan_bands`) and contains the unpatched
peak, each with 2, 3, 4, 6 or 8 bands, plus not patching at all; each is priced by the arena
estimate of the graph it makes (:func:`~.memory_model.estimate_arena`, with the convolutions the
target streams in place: ``streaming``) and its extra MACs as a share of the model's. The cost
model:

* a plan recomputing more than ``max_recompute`` of the model's MACs is never taken;
* with a budget (the target board's RAM, or ``--ram-budget``): the cheapest plan (fewest extra
  MACs, then the smallest peak) whose estimate plus ``reserve`` bytes (stack, kernel workspaces)
  fits; not patching when that fits; when none fits, the smallest peak (the build's budget check
  then says by how much it misses);
* without a budget: the smallest peak.

The chosen plan runs as a nested ``patch-stages`` (recorded like any pass); the stats list every
candidate with its estimate, the choice and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from edgec.ir import EdgeGraph, execution_order, graph_cost, static_shape
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.targets.legalize.memory_model import estimate_arena
from edgec.targets.legalize.patch_stages import PatchStages, apply_bands
from edgec.targets.legalize.patching import NotPatchable, plan_bands

__all__ = ["Candidate", "PlanMemory", "candidates"]

BAND_COUNTS = (2, 3, 4, 6, 8)


@dataclass(frozen=True)
class Candidate:
    """One way to run the graph: ``until``/``bands`` of its patched stage (empty: not patched)."""

    until: str
    bands: int
    peak_bytes: int
    extra_macs: int

    def as_dict(self, macs: int) -> dict[str, Any]:
        return {
            "until": self.until or None,
            "bands": self.bands or None,
            "estimated_peak_bytes": self.peak_bytes,
            "extra_macs": self.extra_macs,
            "extra_macs_share": round(self.extra_macs / max(macs, 1), 4),
        }


def candidates(graph: EdgeGraph, streaming: str = "none") -> list[Candidate]:
    """Not patching, then every stage that runs in row bands with each band count (shapes must be
    inferred); each with its arena estimate and extra MACs.

    Only stages that contain the unpatched peak can lower it, so cuts before the peak's node are
    not tried; for one cut, more bands stop helping once the peak stops falling (the rest of the
    graph then holds it), so the band counts stop there.
    """
    base = estimate_arena(graph, streaming)
    found = [Candidate("", 0, base.peak_bytes, 0)]
    order = execution_order(graph)
    start = next((i for i, node in enumerate(order) if node.name == base.peak_node), 0)
    for node in order[start:]:
        shape = static_shape(node.outputs[0]) if node.outputs else None
        if shape is None or len(shape) != 4:
            continue
        until, previous = node.outputs[0].name, None
        for bands in BAND_COUNTS:
            copy = graph.copy()
            try:
                plan = plan_bands(copy, until, bands)
            except NotPatchable:
                break  # the stage does not run in bands (more bands than rows: neither)
            apply_bands(copy, plan)
            peak = estimate_arena(copy, streaming).peak_bytes
            if previous is not None and peak >= previous:
                break
            found.append(Candidate(until, bands, peak, plan.extra_macs))
            previous = peak
    return found


def choose(
    found: list[Candidate], macs: int, budget: int, reserve: int, limit: float
) -> tuple[Candidate, str]:
    """The plan the cost model takes (module docstring) and why."""
    allowed = [c for c in found if c.extra_macs <= limit * macs]
    smallest = min(allowed, key=lambda c: (c.peak_bytes, c.extra_macs))
    if not budget:
        return smallest, "no RAM budget: the smallest peak"
    fits = [c for c in allowed if c.peak_bytes + reserve <= budget]
    if not fits:
        return smallest, f"no plan fits the budget of {budget} B with {reserve} B reserved: the smallest peak"
    best = min(fits, key=lambda c: (c.extra_macs, c.peak_bytes))
    if not best.until:
        return best, f"unpatched, the graph fits the budget of {budget} B with {reserve} B reserved"
    return best, f"the fewest recomputed MACs that fit the budget of {budget} B with {reserve} B reserved"


@register
@dataclass(frozen=True)
class PlanMemory(Pass):
    """Chooses row bands for a CNN's first stages by peak RAM against recomputed MACs, under a budget."""

    name: ClassVar[str] = "plan-memory"
    # It only runs patch-stages (nested, which measures its own error) or nothing.
    lossless: ClassVar[bool] = False
    budget: int = 0
    max_recompute: float = 0.15
    # Bytes the estimate leaves out: the stack (about 2 KiB) and the kernels' workspaces.
    reserve: int = 4096
    streaming: Literal["none", "depthwise", "all"] = "none"

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        ctx.analyses.get("shapes", graph)
        macs = graph_cost(graph).macs
        found = candidates(graph, self.streaming)
        chosen, why = choose(found, macs, self.budget, self.reserve, self.max_recompute)
        stats: dict[str, Any] = {
            "budget": self.budget or None,
            "macs": macs,
            "chosen": chosen.as_dict(macs),
            "why": why,
            "candidates": [c.as_dict(macs) for c in found],
        }
        if not chosen.until:
            return PassResult(graph, changed=False, stats=stats)
        result = ctx.run_pass(PatchStages(until=chosen.until, bands=chosen.bands), graph)
        return PassResult(result.graph, changed=result.changed, stats=stats)
