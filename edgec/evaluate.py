"""The figures a build reports about itself: the error of the optimized graph and of the built
artifact, and their accuracy on labelled data, against the untouched original model.

The reference is the model file as given, run by onnxruntime with the frozen inputs fed as inputs
(:class:`Reference`), not the graph after ``--freeze-input``: onnxruntime 1.32's graph optimizer
segfaults creating a session for some models once an ``If`` condition input becomes an
initializer (DESIGN.md). Each figure costs one batched run of the artifact
(:meth:`edgec.targets.base.Target.run`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgec.data import Dataset, load_inputs
from edgec.verify import accuracy, error_metrics, random_inputs, run_onnx_batch

if TYPE_CHECKING:
    from edgec.compile import Prepared
    from edgec.config import CompileOptions

# Samples of --eval/--calib data used for the error figures.
ERROR_SAMPLES = 8

# Runs the artifact on inputs with a leading run axis (in the model's input order).
ArtifactRun = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Reference:
    """The untouched original model and the values of the inputs that were frozen.

    Attributes:
        path: the model file, loaded by onnxruntime as it is (external data beside it).
        frozen: per frozen input, the value fed to the original at every run.
    """

    path: Path
    frozen: dict[str, np.ndarray]

    def run(self, runs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the original on ``runs`` (a leading run axis), frozen values fed to each run."""
        count = len(next(iter(runs.values())))
        feeds = {**runs, **{k: np.broadcast_to(v, (count, *v.shape)) for k, v in self.frozen.items()}}
        return run_onnx_batch(self.path, feeds, "the original model (the reference)")

    def describe(self) -> str:
        fed = f", frozen inputs fed: {', '.join(self.frozen)}" if self.frozen else ""
        return f"{self.path.name} as given, run by onnxruntime{fed}"


def error_feeds(prepared: Prepared, options: CompileOptions) -> tuple[Dataset, str]:
    """Inputs for the error figures, and where they came from.

    Real data comes first (a quantized model is only meaningful on in-distribution inputs):
    ``--inputs``, else the first samples of ``--eval`` or ``--calib``, else seeded random inputs.
    """
    original, ctx = prepared.original, prepared.context
    if options.inputs:
        inputs = load_inputs(options.inputs, original)
        return Dataset({k: v[None] for k, v in inputs.items()}, 1), options.inputs.name
    for path, data in ((options.eval, ctx.evaluation), (options.calib, ctx.calibration)):
        if path and isinstance(data, Dataset):
            head = data.head(ERROR_SAMPLES)
            return head, f"{path.name} (first {head.samples} samples)"
    feeds = random_inputs(original, seed=options.seed)
    return Dataset({k: v[None] for k, v in feeds.items()}, 1), f"random normal inputs, seed {options.seed}"


def measure_error(prepared: Prepared, options: CompileOptions, run_artifact: ArtifactRun) -> dict[str, Any]:
    """Error of the optimized graph and of the built artifact against the original model; with
    ``--eval``, accuracy too. With a declared batch (:mod:`edgec.data`), the error compares whole
    runs, repeated rows included: they repeat rows already compared, so the max is exact."""
    feeds, source = error_feeds(prepared, options)
    reference = prepared.reference.run(feeds.runs)
    names = [t.name for t in prepared.original.outputs]
    reference = {name: reference[name] for name in names}
    optimized = run_onnx_batch(prepared.graph.to_onnx(), feeds.runs, "the optimized model")
    outputs = run_artifact([feeds.runs[t.name] for t in prepared.original.inputs])
    artifact = dict(zip(names, outputs, strict=True))
    result: dict[str, Any] = {
        "inputs": source,
        "reference": prepared.reference.describe(),
        "optimized_vs_original": error_metrics(reference, optimized, samples=feeds.samples).as_dict(),
        "artifact_vs_original": error_metrics(reference, artifact, samples=feeds.samples).as_dict(),
    }
    if options.eval:
        result["accuracy"] = measure_accuracy(prepared, options, run_artifact)
    return result


def measure_accuracy(
    prepared: Prepared, options: CompileOptions, run_artifact: ArtifactRun
) -> dict[str, Any]:
    """Top-1 accuracy of the original and of the artifact on the ``--eval`` data (first output)."""
    data = prepared.context.evaluation
    assert isinstance(data, Dataset) and data.labels is not None and options.eval is not None
    first = prepared.original.outputs[0].name
    reference = data.rows(prepared.reference.run(data.runs)[first], f"output '{first}'")
    outputs = run_artifact([data.runs[t.name] for t in prepared.original.inputs])
    artifact = data.rows(outputs[0], f"output '{first}'")
    return {
        "dataset": options.eval.name,
        "samples": data.samples,
        "original": accuracy(reference, data.labels),
        "artifact": accuracy(artifact, data.labels),
    }
