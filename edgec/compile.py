"""The one orchestration: load → import passes → user pipeline → target legalization → lower →
build → verify → manifest.

``edgec.compile`` (Python) and ``edgec compile`` (CLI) both end up in :func:`compile_model`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgec
from edgec.budgets import budget_gates
from edgec.config import CompileOptions
from edgec.data import Dataset, declared_batch, load_dataset
from edgec.errors import BudgetError, EdgecError
from edgec.evaluate import Reference, measure_error
from edgec.ir import (
    EdgeGraph,
    atomic_path,
    fix_input_shapes,
    format_shape,
    freeze_inputs,
    graph_cost,
    infer_shapes,
    parse_freeze,
    peak_live_bytes,
    read_model,
    save,
    static_shape,
)
from edgec.isolation import worker
from edgec.manifest import MANIFEST, TIMINGS, file_hashes, sha256_file, write_json
from edgec.pm import PassContext, PassManager, PipelineRun, format_pipeline, parse_pipeline
from edgec.precision import mismatches, planned
from edgec.progress import Progress
from edgec.report import memory_section
from edgec.tune import tune_before_build, with_threads_and_database

IMPORT_PIPELINE = "import"


@dataclass
class Prepared:
    """A model after the import path and the pipeline, with what the manifest needs of it."""

    source: Path
    original: EdgeGraph  # after freezing inputs and fixing shapes, before any pass
    run: PipelineRun
    pipeline: str
    context: PassContext
    reference: Reference  # the untouched model, what error and accuracy are measured against
    frozen: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def graph(self) -> EdgeGraph:
        return self.run.graph


@dataclass
class CompileResult:
    out_dir: Path
    manifest: dict[str, Any]
    timings: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.manifest["status"]["ok"]


def _signature(prepared: Prepared) -> dict[str, list[dict[str, Any]]]:
    def describe(tensor) -> dict[str, Any]:
        if static_shape(tensor) is None or tensor.dtype is None:
            raise EdgecError(
                f"the shape of '{tensor.name}' ({format_shape(tensor.shape)}) cannot be inferred, so no "
                "artifact can be built for it; check the attributes of the nodes that compute it "
                "(pads, strides, axes) and the input shapes (--input-shape)"
            )
        return {"name": tensor.name, "dtype": np.dtype(tensor.dtype).name, "shape": list(tensor.shape)}

    # Inputs as the caller feeds them; an output whose shape ONNX inference cannot give on the
    # original (a Loop's outputs) is described as the optimized graph, loops unrolled, computes it.
    optimized = {t.name: t for t in prepared.graph.outputs}
    outputs = [
        t if static_shape(t) is not None or t.name not in optimized else optimized[t.name]
        for t in prepared.original.outputs
    ]
    inputs = prepared.original.inputs
    return {"inputs": [describe(t) for t in inputs], "outputs": [describe(t) for t in outputs]}


@dataclass
class LoadedModel:
    """A model as edgec imports it.

    Attributes:
        graph: inputs frozen, shapes fixed and inferred.
        frozen: the frozen inputs' values as JSON values (for the manifest).
        reference: the untouched model file and the frozen values to feed it.
        batch: the fixed size of the inputs' declared dynamic batch axis, if they declare one
            (see :mod:`edgec.data`).
    """

    graph: EdgeGraph
    frozen: dict[str, Any]
    reference: Reference
    batch: int | None


def load_model(source: Path, options: CompileOptions) -> LoadedModel:
    """Reads the model, freezes the inputs the options name and fixes every input's shape."""
    graph = EdgeGraph.from_onnx(read_model(source))
    values = {name: parse_freeze(f"{name}={spec}")[1] for name, spec in options.freeze_inputs.items()}
    dtypes = {tensor.name: np.dtype(tensor.dtype) for tensor in graph.inputs if tensor.name in values}
    frozen = freeze_inputs(graph, values) if values else {}
    # The recorded values are exact (float32 values survive the round trip through Python floats).
    reference = Reference(source, {name: np.asarray(value, dtypes[name]) for name, value in frozen.items()})
    declared = {tensor.name: tensor.shape for tensor in graph.inputs}
    fix_input_shapes(graph, options.input_shapes)
    infer_shapes(graph)
    return LoadedModel(graph, frozen, reference, declared_batch(declared, graph))


def target_of(options: CompileOptions) -> Any:
    """The target the options name, with the code-generation choices the options make (its
    requantization rounding, its int8 micro-kernels, sparse weights, its RAM budget, its memory
    planning, its threads); the manifest records them."""
    from edgec.targets import get_target

    target = with_threads_and_database(get_target(options.target), options)
    if options.rounding:
        target = dataclasses.replace(target, requantize_rounding=options.rounding)
    if not options.micro_kernels:
        target = dataclasses.replace(target, micro_kernels=False)
    if not options.sparse_weights:
        target = dataclasses.replace(target, sparse_weights=False)
    if options.ram_budget:  # the budget the memory planner plans for and the build is checked against
        target = dataclasses.replace(target, ram_bytes=options.ram_budget)
    if not options.memory_planning and getattr(target, "memory_planning", False):
        target = dataclasses.replace(target, memory_planning=False)
    return target


def prepare(model: str | Path, options: CompileOptions, progress: Progress | None = None) -> Prepared:
    """Loads the model, freezes inputs, fixes shapes, and runs the import path and the pipeline.

    The passes see the capabilities of ``options.target``: what they decide (which nodes become
    int8, whether the graph may compute in float16) is what that target can build.
    """
    progress = progress or Progress(quiet=True)
    source = Path(model)
    # Parsed first: a typo in the pipeline fails before any slow work.
    steps = parse_pipeline(options.full_pipeline())
    if options.max_accuracy_drop is not None and not options.eval:
        raise EdgecError("--max-accuracy-drop needs labelled data to measure accuracy: add --eval test.npz")
    # Its startup overlaps the loading: every compile measures against onnxruntime.
    worker("onnxruntime").start(preload=("numpy", "onnxruntime"))
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with progress.step(f"loading {source.name}"):
        loaded = load_model(source, options)
        graph, original = loaded.graph, loaded.graph.copy()
    seconds["load"] = time.perf_counter() - start

    ctx = PassContext(
        target=options.target,
        capabilities=target_of(options).capabilities(),
        verify=options.verify,
        seed=options.seed,
        calibration=load_dataset(options.calib, original, batch=loaded.batch) if options.calib else None,
        evaluation=load_dataset(options.eval, original, labelled=True, batch=loaded.batch)
        if options.eval
        else None,
        training=load_dataset(options.train, original).arrays() if options.train else None,
        reference=original,
        dump_after=frozenset(options.dump_after),
        warn=progress.warn,
        progress=progress.bar,
    )
    start = time.perf_counter()
    with progress.step(f"running the pipeline {format_pipeline(steps)}"):
        run = PassManager(steps, ctx).run(graph)
        if not ctx.analyses.get("shapes", run.graph):
            infer_shapes(run.graph)  # inference fails: raise its error
    seconds["passes"] = time.perf_counter() - start
    return Prepared(
        source, original, run, format_pipeline(steps), ctx, loaded.reference, loaded.frozen, seconds
    )


def legalize(prepared: Prepared, target: Any, progress: Progress) -> PipelineRun:
    """Runs the target's legalization pipeline on a copy of the prepared graph (recorded like any
    pipeline; the prepared graph stays the optimized model the artifact is measured against)."""
    pipeline = target.capabilities().legalization
    if not pipeline:
        return PipelineRun(prepared.graph)
    with progress.step(f"legalizing for {target.name} ({pipeline})"):
        return target.legalize(prepared.graph.copy(), prepared.context)


def _pass_records(run: PipelineRun) -> list[dict[str, Any]]:
    return [record.as_dict() for record in run.records]


def _check_out_dir(out_dir: Path, source: Path) -> None:
    out = out_dir.resolve()
    model_dir = source.resolve().parent
    if out == model_dir or model_dir.is_relative_to(out):
        raise EdgecError(
            f"output directory '{out_dir}' contains the input model; choose another folder with -o"
        )
    if out.exists() and not out.is_dir():
        raise EdgecError(f"output '{out_dir}' exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise EdgecError(
            f"output directory '{out_dir}' is not empty and is not an edgec build; "
            "choose an empty or new folder"
        )
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise EdgecError(
            f"output directory '{out_dir}' cannot be created: '{parent}' is not a writable folder"
        )


def compile_model(
    model: str | Path,
    out_dir: str | Path,
    options: CompileOptions | None = None,
    progress: Progress | None = None,
) -> CompileResult:
    """Compiles an ONNX model for a target into ``out_dir`` (written atomically).

    Raises:
        EdgecError: for any user error (nothing is written then).
        BudgetError: after writing the artifact, when a flash, RAM or accuracy budget is missed.
    """
    options = options or CompileOptions()
    progress = progress or Progress(quiet=True)
    out_dir = Path(out_dir)
    source = Path(model)
    target = target_of(options)
    _check_out_dir(out_dir, source)
    target.prepare_run()
    prepared = prepare(source, options, progress)
    from edgec.check import check_model

    start = time.perf_counter()
    legal = legalize(prepared, target, progress)
    graph = legal.graph
    timings: dict[str, Any] = {**prepared.seconds, "legalize": time.perf_counter() - start}
    # The import path and the legalization already ran on this graph: check what is left, as it is.
    check_model(graph, target.name, pipeline="", legalize=False).raise_if_unsupported()
    name = options.name or _c_identifier(source.stem)
    signature = _signature(prepared)  # before building: an output without a static shape fails here
    tuning = tune_before_build(target, graph, options, progress, timings) if options.tune else None
    with atomic_path(out_dir, directory=True) as build_dir:
        start = time.perf_counter()
        with progress.step(f"lowering to TVM Relax for {target.name}"):
            lowered = target.lower(graph)
        # The manifest says what was built; a plan the build does not honour is an error.
        problems = mismatches(planned(graph), lowered.nodes)
        if problems:
            raise EdgecError(
                f"target '{target.name}' cannot build what the passes decided: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + "; quantize for this target (edgec compile --quantize ... --target "
                f"{target.name}) instead of reusing a model quantized for another"
            )
        module = lowered.module
        timings["lower"] = time.perf_counter() - start
        start = time.perf_counter()
        with progress.step(f"building for {target.name}"):
            artifact = target.build(module, build_dir, name)
        timings["build"] = time.perf_counter() - start
        save(prepared.graph, build_dir / "optimized.onnx")
        manifest_stub = {**signature, "target": target.describe()}
        start = time.perf_counter()
        with progress.step("measuring the artifact against onnxruntime"):
            error = measure_error(
                prepared, options, lambda inputs: target.run(build_dir, manifest_stub, inputs)[0]
            )
        timings["verify"] = time.perf_counter() - start
        cost = graph_cost(prepared.graph)  # the optimized model, as saved in optimized.onnx
        sizes = {
            "weights_bytes": cost.weight_bytes,
            "original_weights_bytes": graph_cost(prepared.original).weight_bytes,
            "activation_lower_bound_bytes": peak_live_bytes(prepared.graph),
            **artifact.sizes,
        }
        failures = budget_gates(target, sizes, error, options)
        legalization = _pass_records(legal)
        manifest = {
            "schema": 1,
            "edgec_version": edgec.__version__,
            "name": name,
            "model": {"file": source.name, "sha256": sha256_file(source)},
            **signature,
            "target": {**target.describe(), "tvm_target": target.tvm_target()},
            "pipeline": prepared.pipeline,
            "pipeline_notes": prepared.run.notes,
            "frozen_inputs": prepared.frozen,
            "data": _data_records(prepared, options),
            "passes": _pass_records(prepared.run),
            "legalization": legalization,
            "memory": memory_section(legalization, artifact.details),
            "capabilities": prepared.context.capabilities.as_dict()
            if prepared.context.capabilities
            else None,
            "precision": {node: built.as_dict() for node, built in sorted(lowered.nodes.items())},
            "micro_kernels": lowered.details.get("micro_kernels"),
            "graph": {
                "nodes_original": len(prepared.original.nodes),
                "nodes_optimized": len(prepared.graph.nodes),
                "macs": cost.macs,
                "params": cost.params,
            },
            "sizes": sizes,
            "error": error,
            "tuning": {**lowered.details.get("tuning", {}), **(tuning or {})} or None,
            "artifact": artifact.details,
            "files": file_hashes(build_dir),
            "status": {"ok": not failures, "failed_gates": failures},
        }
        write_json(build_dir / MANIFEST, manifest)
        timings["passes_detail"] = [
            {"name": r.name, "seconds": r.seconds} for r in [*prepared.run.records, *legal.records]
        ]
        write_json(build_dir / TIMINGS, timings)
    result = CompileResult(out_dir, manifest, timings)
    if failures:
        raise BudgetError("; ".join(failures) + f" (artifact written to {out_dir})")
    return result


def _data_records(prepared: Prepared, options: CompileOptions) -> dict[str, Any]:
    """How the samples of ``--calib`` and ``--eval`` mapped onto model runs (see ``edgec.data``)."""
    ctx = prepared.context
    records = {}
    for key, path, data in (
        ("calib", options.calib, ctx.calibration),
        ("eval", options.eval, ctx.evaluation),
    ):
        if path and isinstance(data, Dataset):
            records[key] = {"file": path.name, **data.describe()}
    return records


def _c_identifier(stem: str) -> str:
    import re

    name = re.sub(r"[^0-9a-zA-Z_]", "_", stem).strip("_").lower() or "model"
    return f"m_{name}" if name[0].isdigit() else name


def optimize_model(
    model: str | Path,
    output: str | Path,
    options: CompileOptions | None = None,
    progress: Progress | None = None,
) -> Prepared:
    """Runs the import path and the pipeline and saves the optimized ONNX (never over the input)."""
    options = options or CompileOptions()
    source, output = Path(model), Path(output)
    if output.resolve() == source.resolve():
        raise EdgecError(f"output '{output}' is the input model; edgec never overwrites its input")
    if output.is_dir():
        raise EdgecError(f"output '{output}' is a directory; give a file name such as model.opt.onnx")
    prepared = prepare(source, options, progress)
    save(prepared.graph, output)
    return prepared
