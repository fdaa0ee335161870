"""``edgec tune``: the kernels of a model's legal graph tuned into a database, without building."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgec.compile import legalize, prepare, target_of
from edgec.config import CompileOptions
from edgec.progress import Progress

__all__ = ["tune_model"]


def tune_model(
    model: str | Path, options: CompileOptions, trials: int, progress: Progress | None = None
) -> Any:
    """Runs the import path, the pipeline and the target's legalization, then tunes the kernels
    of the legal graph into ``options.db`` (``edgec tune``); returns the tuning report."""
    progress = progress or Progress(quiet=True)
    options = options.merged({"tune": trials})
    target = target_of(options)
    prepared = prepare(Path(model), options, progress)
    graph = legalize(prepared, target, progress).graph
    return target.tune(graph, trials, seed=options.seed, progress=progress)
