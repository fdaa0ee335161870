"""``PassManager``: runs a pipeline, enforces the pass contract, and records every pass.

The run loop only sequences passes; what happens around each pass (timing, verification of
lossless passes, dumps, cost deltas) is done by instruments (:mod:`edgec.pm.instruments`), and
cached analyses are invalidated from what each pass declares it preserves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm.base import Pass, PassContext, PassResult
from edgec.pm.instruments import LOSSLESS_ATOL, LOSSLESS_RTOL, PassInstrument, default_instruments
from edgec.pm.pipeline import FixedPoint, Step, parse_pipeline

__all__ = ["LOSSLESS_ATOL", "LOSSLESS_RTOL", "PassContractError", "PassManager", "PassRecord", "PipelineRun"]


class PassContractError(EdgecError):
    """A pass broke the contract it declares (in place vs. functional): a bug in the pass."""


@dataclass
class PassRecord:
    """One executed pass, as the manifest reports it.

    ``parent`` names the pass that ran this one through ``ctx.run_pass`` (``None`` at top level);
    ``cost`` holds ``[before, after]`` MACs, parameters and weight bytes when the pass changed them.
    """

    name: str
    options: dict[str, Any]
    changed: bool
    stats: dict[str, Any]
    nodes_before: int
    nodes_after: int
    seconds: float = 0.0
    max_abs_error: float | None = None
    cost: dict[str, list[int]] | None = None
    parent: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The manifest's form of the record (no wall-clock time: builds are byte-identical)."""
        record: dict[str, Any] = {
            "name": self.name,
            "options": self.options,
            "changed": self.changed,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "stats": self.stats,
        }
        if self.parent is not None:
            record["parent"] = self.parent
        if self.cost is not None:
            record["cost"] = self.cost
        if self.max_abs_error is not None:
            record["max_abs_error"] = self.max_abs_error
        return record


@dataclass
class PipelineRun:
    """The result of a pipeline: the final graph, one record per pass run, and notes (e.g. a
    fixed point that was not reached)."""

    graph: EdgeGraph
    records: list[PassRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class PassManager:
    """Runs steps over a graph under a context, with instruments around every pass.

    Args:
        steps: parsed steps, or a pipeline string.
        ctx: the shared pass context.
        on_pass: called before each top-level pass with its name (progress display).
        instruments: what runs around each pass; default: verification (when ``ctx.verify``),
            dumps, cost deltas and timing.
    """

    def __init__(
        self,
        steps: Sequence[Step] | str,
        ctx: PassContext | None = None,
        on_pass: Callable[[str], None] | None = None,
        instruments: list[PassInstrument] | None = None,
    ) -> None:
        self.steps = parse_pipeline(steps) if isinstance(steps, str) else list(steps)
        self.ctx = ctx or PassContext()
        self.on_pass = on_pass or (lambda name: None)
        self.instruments = default_instruments() if instruments is None else instruments
        self._parents: list[str] = []
        self._run: PipelineRun | None = None

    def run(self, graph: EdgeGraph) -> PipelineRun:
        run = PipelineRun(graph)
        self._run = run
        outer_runner = self.ctx.runner
        self.ctx.runner = self._run_pass
        try:
            for step in self.steps:
                if isinstance(step, FixedPoint):
                    self._run_fixed_point(step, run)
                else:
                    run.graph = self._run_pass(step, run.graph).graph
        finally:
            self.ctx.runner = outer_runner
            self._run = None
        return run

    def _run_fixed_point(self, step: FixedPoint, run: PipelineRun) -> None:
        for _ in range(step.limit):
            changed = False
            for inner in step.passes:
                result = self._run_pass(inner, run.graph)
                run.graph = result.graph
                changed |= result.changed
            if not changed:
                return
        note = (
            f"pipeline '{step.name}' did not reach its fixed point within {step.limit} rounds "
            "(its passes still changed the graph in the last round); the graph is valid, but "
            "a pass may be undoing another"
        )
        self.ctx.warn(note)
        run.notes.append(note)

    def _run_pass(self, instance: Pass, graph: EdgeGraph) -> PassResult:
        assert self._run is not None
        if not self._parents:
            self.on_pass(instance.name)
        states = [instrument.before(instance, graph, self.ctx) for instrument in self.instruments]
        nodes_before = len(graph.nodes)
        cls = type(instance)
        fingerprint = None if cls.in_place else graph.fingerprint()
        self._parents.append(instance.name)
        try:
            result = instance.run(graph, self.ctx)
        finally:
            self._parents.pop()
        _check_contract(instance, graph, result, fingerprint)
        record = PassRecord(
            name=instance.name,
            options=instance.options(),
            changed=result.changed,
            stats=dict(result.stats),
            nodes_before=nodes_before,
            nodes_after=len(result.graph.nodes),
            parent=self._parents[-1] if self._parents else None,
        )
        if result.changed:
            self.ctx.analyses.invalidate(result.graph, cls.preserves)
        for instrument, state in reversed(list(zip(self.instruments, states, strict=True))):
            instrument.after(instance, state, result, record, self.ctx)
        # Completion order: passes this one ran are listed before it.
        self._run.records.append(record)
        return result


def _check_contract(instance: Pass, graph: EdgeGraph, result: PassResult, fingerprint: int | None) -> None:
    name = instance.name
    if not isinstance(result, PassResult):
        raise PassContractError(f"pass '{name}' returned {type(result).__name__}, not a PassResult")
    if type(instance).in_place:
        if result.graph is not graph:
            raise PassContractError(
                f"pass '{name}' is declared in place but returned a new graph; declare "
                "in_place = False (and leave the input untouched) or return the graph it was given"
            )
        return
    if graph.fingerprint() != fingerprint:
        raise PassContractError(
            f"pass '{name}' is declared functional (in_place = False) but changed the graph it was "
            "given; work on graph.copy() (copies share weights until written)"
        )
    if result.changed and result.graph is graph:
        raise PassContractError(f"pass '{name}' is declared functional but changed its input graph in place")
