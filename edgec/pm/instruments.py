"""Pass instruments: what happens around every pass (TVM's ``PassInstrument``), kept out of the
pass manager's run loop: timing, numeric verification of lossless passes, dumps, cost deltas.

An instrument's ``before`` returns a state that the manager hands back to ``after`` for the same
pass run, so instruments work for nested passes (a pass that runs other passes) too.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgec.errors import VerificationError
from edgec.ir import EdgeGraph

if TYPE_CHECKING:
    from edgec.pm.base import Pass, PassContext, PassResult
    from edgec.pm.manager import PassRecord

# fp32 lossless tolerance (STYLE.md): |after - before| <= ATOL * max(1, max|before|) + RTOL*|before|
LOSSLESS_ATOL = 1e-5
LOSSLESS_RTOL = 1e-4


class PassInstrument:
    """Hooks around each pass run; the default hooks do nothing."""

    def before(self, instance: Pass, graph: EdgeGraph, ctx: PassContext) -> Any:
        return None

    def after(
        self, instance: Pass, state: Any, result: PassResult, record: PassRecord, ctx: PassContext
    ) -> None:
        return None


class Timing(PassInstrument):
    """Wall-clock seconds of each pass (``record.seconds``; nested passes count in their parent)."""

    def before(self, instance: Pass, graph: EdgeGraph, ctx: PassContext) -> float:
        return time.perf_counter()

    def after(self, instance, state, result, record, ctx) -> None:
        record.seconds = time.perf_counter() - state


class Dump(PassInstrument):
    """Writes the graph's text form after the passes named in ``ctx.dump_after``."""

    def __init__(self) -> None:
        self.count = 0

    def after(self, instance, state, result, record, ctx) -> None:
        self.count += 1
        if instance.name not in ctx.dump_after:
            return
        text = result.graph.text()
        if ctx.dump_dir is None:
            sys.stderr.write(f"// ----- after {instance.name} -----\n{text}")
            return
        ctx.dump_dir.mkdir(parents=True, exist_ok=True)
        (Path(ctx.dump_dir) / f"{self.count:03d}-{instance.name}.txt").write_text(text)


class CostDelta(PassInstrument):
    """MACs, parameters and weight bytes before and after each pass that changed the graph
    (``record.cost``), from the cached ``cost`` analysis."""

    def before(self, instance: Pass, graph: EdgeGraph, ctx: PassContext) -> Any:
        return _totals(ctx, graph)

    def after(self, instance, state, result, record, ctx) -> None:
        if not result.changed or state is None:
            return
        after = _totals(ctx, result.graph)
        if after is not None and after != state:
            record.cost = {key: [state[key], after[key]] for key in state}


def _totals(ctx: PassContext, graph: EdgeGraph) -> dict[str, int] | None:
    if not ctx.analyses.get("shapes", graph):
        return None
    cost = ctx.analyses.get("cost", graph)
    return {"macs": cost.macs, "params": cost.params, "weight_bytes": cost.weight_bytes}


class Verify(PassInstrument):
    """Runs each lossless pass's input and output with onnxruntime on seeded random inputs and
    fails when an output moved beyond the fp32 tolerance (``record.max_abs_error``).

    Reference outputs are cached by graph fingerprint, so a pipeline of lossless passes costs one
    onnxruntime run per pass that changed the graph.
    """

    def __init__(self, cache_size: int = 4) -> None:
        self.feeds: dict[str, np.ndarray] | None = None
        self.outputs: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.cache_size = cache_size

    def _reference(self, instance: Pass, graph: EdgeGraph, ctx: PassContext) -> dict[str, np.ndarray]:
        from edgec.verify import random_inputs, run_onnx

        key = graph.fingerprint()
        if key in self.outputs:
            return self.outputs[key]
        if self.feeds is None:
            self.feeds = random_inputs(graph, seed=ctx.seed)
        return self._remember(
            key,
            run_onnx(graph.to_onnx(), self.feeds, f"the graph before pass '{instance.name}' (verification)"),
        )

    def _remember(self, key: int, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.outputs[key] = outputs
        while len(self.outputs) > self.cache_size:
            self.outputs.popitem(last=False)
        return outputs

    def before(self, instance: Pass, graph: EdgeGraph, ctx: PassContext) -> Any:
        if not (ctx.verify and type(instance).lossless):
            return None
        return self._reference(instance, graph, ctx)

    def after(self, instance, state, result, record, ctx) -> None:
        if state is None or not result.changed:
            return
        from edgec.verify import run_onnx

        assert self.feeds is not None
        after = run_onnx(
            result.graph.to_onnx(), self.feeds, f"the graph after pass '{instance.name}' (verification)"
        )
        record.max_abs_error = check_lossless(instance.name, state, after)
        self._remember(result.graph.fingerprint(), after)


def check_lossless(name: str, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> float:
    """The largest absolute change of any output; raises when one exceeds the fp32 tolerance."""
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


def default_instruments(cost: bool = True) -> list[PassInstrument]:
    """Verification (active when ``ctx.verify``), dumps, with ``cost`` cost deltas, and timing.

    The manager calls ``before`` hooks in list order and ``after`` hooks in reverse, so timing,
    last in the list, measures the pass alone.
    """
    instruments: list[PassInstrument] = [Verify(), Dump()]
    if cost:
        instruments.append(CostDelta())
    instruments.append(Timing())
    return instruments
