"""``PassManager``: runs a pipeline, times and records every pass, verifies lossless ones."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgec.errors import VerificationError
from edgec.ir import EdgeGraph
from edgec.pm.base import Pass, PassContext
from edgec.pm.pipeline import FixedPoint, Step, parse_pipeline


@dataclass
class PassRecord:
    """One executed pass, as the manifest reports it."""

    name: str
    options: dict[str, Any]
    seconds: float
    changed: bool
    stats: dict[str, Any]
    nodes_before: int
    nodes_after: int
    max_abs_error: float | None = None


@dataclass
class PipelineRun:
    graph: EdgeGraph
    records: list[PassRecord] = field(default_factory=list)


# fp32 lossless tolerance (STYLE.md): |after - before| <= ATOL * max(1, max|before|) + RTOL*|before|
LOSSLESS_ATOL = 1e-5
LOSSLESS_RTOL = 1e-4


class PassManager:
    """Runs steps over a graph; with ``ctx.verify``, checks every lossless pass against ORT.

    Args:
        steps: parsed steps, or a pipeline string.
        ctx: the shared pass context.
        on_pass: called before each pass with its name (progress display).
    """

    def __init__(
        self,
        steps: list[Step] | str,
        ctx: PassContext | None = None,
        on_pass: Callable[[str], None] | None = None,
    ) -> None:
        self.steps = parse_pipeline(steps) if isinstance(steps, str) else list(steps)
        self.ctx = ctx or PassContext()
        self.on_pass = on_pass or (lambda name: None)
        self._reference: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

    def run(self, graph: EdgeGraph) -> PipelineRun:
        run = PipelineRun(graph)
        for step in self.steps:
            if isinstance(step, FixedPoint):
                for _ in range(step.limit):
                    changed = False
                    for inner in step.passes:
                        changed |= self._run_pass(inner, run)
                    if not changed:
                        break
            else:
                self._run_pass(step, run)
        return run

    def _verification_inputs(self, graph: EdgeGraph) -> dict[str, np.ndarray]:
        from edgec.verify import random_inputs, run_onnx

        if self._reference is None:
            feeds = random_inputs(graph, seed=self.ctx.seed)
            self._reference = (feeds, run_onnx(graph.to_onnx(), feeds))
        return self._reference[0]

    def _run_pass(self, instance: Pass, run: PipelineRun) -> bool:
        from edgec.verify import run_onnx

        self.on_pass(instance.name)
        verify = self.ctx.verify and type(instance).lossless
        if verify:
            feeds = self._verification_inputs(run.graph)
            before = self._reference[1]
        nodes_before = len(run.graph.nodes)
        start = time.perf_counter()
        result = instance.run(run.graph, self.ctx)
        seconds = time.perf_counter() - start
        record = PassRecord(
            name=instance.name,
            options=instance.options(),
            seconds=seconds,
            changed=result.changed,
            stats=dict(result.stats),
            nodes_before=nodes_before,
            nodes_after=len(result.graph.nodes),
        )
        if verify and result.changed:
            after = run_onnx(result.graph.to_onnx(), feeds)
            record.max_abs_error = _check_lossless(instance.name, before, after)
            self._reference = (feeds, after)
        elif not type(instance).lossless and result.changed:
            self._reference = None  # a lossy pass sets a new reference for the passes after it
        run.graph = result.graph
        run.records.append(record)
        if instance.name in self.ctx.dump_after:
            self._dump(instance.name, len(run.records), run.graph)
        return result.changed

    def _dump(self, name: str, index: int, graph: EdgeGraph) -> None:
        text = graph.text()
        if self.ctx.dump_dir is None:
            sys.stderr.write(f"// ----- after {name} -----\n{text}")
            return
        self.ctx.dump_dir.mkdir(parents=True, exist_ok=True)
        (self.ctx.dump_dir / f"{index:03d}-{name}.txt").write_text(text)


def _check_lossless(name: str, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> float:
    if set(before) != set(after):
        raise VerificationError(
            f"pass '{name}' changed the model's outputs from {sorted(before)} to {sorted(after)}"
        )
    worst = 0.0
    for key, reference in before.items():
        got = after[key]
        if got.shape != reference.shape:
            raise VerificationError(
                f"pass '{name}' changed output '{key}' from shape {reference.shape} to {got.shape}"
            )
        if reference.dtype.kind not in "fc":
            if not np.array_equal(reference, got):
                raise VerificationError(f"pass '{name}' changed integer output '{key}'")
            continue
        error = np.abs(got.astype(np.float64) - reference)
        scale = max(1.0, float(np.max(np.abs(reference), initial=0.0)))
        bound = LOSSLESS_ATOL * scale + LOSSLESS_RTOL * np.abs(reference)
        if np.any(np.isnan(got) != np.isnan(reference)) or np.any(error > bound):
            raise VerificationError(
                f"pass '{name}' is marked lossless but changed output '{key}' by up to "
                f"{float(np.nanmax(error)):.3g} (bound {LOSSLESS_ATOL:g}*max(1,|ref|max) + "
                f"{LOSSLESS_RTOL:g}*|ref|); this is a bug in the pass"
            )
        worst = max(worst, float(np.nanmax(error, initial=0.0)))
    return worst
