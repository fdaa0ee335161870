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
from edgec.config import CompileOptions
from edgec.data import LABEL_KEY, load_dataset, load_inputs, read_npz, samples_of
from edgec.errors import BudgetError, EdgecError
from edgec.ir import (
    EdgeGraph,
    atomic_path,
    fix_input_shapes,
    freeze_inputs,
    graph_cost,
    infer_shapes,
    parse_freeze,
    peak_live_bytes,
    read_model,
    save,
    static_shape,
)
from edgec.manifest import MANIFEST, TIMINGS, file_hashes, sha256_file, write_json
from edgec.pm import PassContext, PassManager, PipelineRun, format_pipeline, parse_pipeline
from edgec.precision import mismatches, planned
from edgec.progress import Progress
from edgec.report import memory_section
from edgec.verify import accuracy, error_metrics, random_inputs

IMPORT_PIPELINE = "import"


@dataclass
class Prepared:
    """A model after the import path and the pipeline, with what the manifest needs of it."""

    source: Path
    original: EdgeGraph  # after freezing inputs and fixing shapes, before any pass
    run: PipelineRun
    pipeline: str
    context: PassContext
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


def load_model(source: Path, options: CompileOptions) -> tuple[EdgeGraph, dict[str, Any]]:
    """Reads the model, freezes the inputs the options name and fixes every input's shape.

    Returns the graph (shapes inferred) and the record of frozen inputs for the manifest.
    """
    graph = EdgeGraph.from_onnx(read_model(source))
    values = {name: parse_freeze(f"{name}={spec}")[1] for name, spec in options.freeze_inputs.items()}
    frozen = freeze_inputs(graph, values) if values else {}
    fix_input_shapes(graph, options.input_shapes)
    infer_shapes(graph)
    return graph, frozen


def target_of(options: CompileOptions) -> Any:
    """The target the options name, with the code-generation choices the options make (its
    requantization rounding, its int8 micro-kernels, its RAM budget, its memory planning); the
    manifest records them."""
    from edgec.targets import get_target

    target = get_target(options.target)
    if options.rounding:
        target = dataclasses.replace(target, requantize_rounding=options.rounding)
    if not options.micro_kernels:
        target = dataclasses.replace(target, micro_kernels=False)
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
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with progress.step(f"loading {source.name}"):
        graph, frozen = load_model(source, options)
        original = graph.copy()
    seconds["load"] = time.perf_counter() - start

    ctx = PassContext(
        target=options.target,
        capabilities=target_of(options).capabilities(),
        verify=options.verify,
        seed=options.seed,
        calibration=samples_of(load_dataset(options.calib, original), original) if options.calib else None,
        evaluation=load_dataset(options.eval, original, labelled=True) if options.eval else None,
        training=load_dataset(options.train, original) if options.train else None,
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
    return Prepared(source, original, run, format_pipeline(steps), ctx, frozen, seconds)


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


# Samples of --eval/--calib data used for the error figures (each one is an artifact run).
ERROR_SAMPLES = 8


def _error_feeds(original: EdgeGraph, options: CompileOptions) -> tuple[dict[str, np.ndarray], str]:
    """Inputs with a leading sample axis for the error figures, and where they came from.

    Real data comes first (a quantized model is only meaningful on in-distribution inputs):
    ``--inputs``, else the first samples of ``--eval`` or ``--calib``, else seeded random inputs.
    """
    if options.inputs:
        return {k: v[None] for k, v in load_inputs(options.inputs, original).items()}, options.inputs.name
    for path in (options.eval, options.calib):
        if path:
            samples = samples_of(load_dataset(path, original), original)
            count = min(ERROR_SAMPLES, len(next(iter(samples.values()))))
            return {k: v[:count] for k, v in samples.items()}, f"{path.name} (first {count} samples)"
    feeds = random_inputs(original, seed=options.seed)
    return {k: v[None] for k, v in feeds.items()}, f"random normal inputs, seed {options.seed}"


def _measure_error(prepared: Prepared, options: CompileOptions, run_artifact) -> dict[str, Any]:
    """Error of the optimized graph and of the built artifact against the original model."""
    from edgec.verify import run_onnx_batch

    original = prepared.original
    feeds, source = _error_feeds(original, options)
    count = len(next(iter(feeds.values())))
    reference = run_onnx_batch(original.to_onnx(), feeds)
    optimized = run_onnx_batch(prepared.graph.to_onnx(), feeds)
    order = [t.name for t in original.inputs]
    runs = [run_artifact([np.asarray(feeds[name][i]) for name in order]) for i in range(count)]
    names = [t.name for t in original.outputs]
    artifact = {name: np.stack([run[k] for run in runs]) for k, name in enumerate(names)}
    result: dict[str, Any] = {
        "inputs": source,
        "optimized_vs_original": error_metrics(reference, optimized, samples=count).as_dict(),
        "artifact_vs_original": error_metrics(reference, artifact, samples=count).as_dict(),
    }
    if options.eval:
        result["accuracy"] = _measure_accuracy(prepared, options, run_artifact)
    return result


def _measure_accuracy(prepared: Prepared, options: CompileOptions, run_artifact) -> dict[str, Any]:
    from edgec.verify import run_onnx_batch

    original = prepared.original
    dataset = load_dataset(options.eval, original, labelled=True)
    samples = samples_of(dataset, original)
    labels = dataset["label"]
    first_output = original.outputs[0].name
    reference = run_onnx_batch(original.to_onnx(), samples)[first_output]
    order = [t.name for t in original.inputs]
    artifact = np.stack([run_artifact([samples[name][i] for name in order])[0] for i in range(len(labels))])
    return {
        "dataset": options.eval.name,
        "samples": len(labels),
        "original": accuracy(reference, labels),
        "artifact": accuracy(artifact, labels),
    }


def _budget_gates(target, sizes: dict[str, int], error: dict[str, Any], options: CompileOptions) -> list[str]:
    failures = []
    if options.max_accuracy_drop is not None and "accuracy" in error:
        drop = error["accuracy"]["original"] - error["accuracy"]["artifact"]
        if drop > options.max_accuracy_drop:
            failures.append(
                f"accuracy drop {drop:.4f} exceeds --max-accuracy-drop {options.max_accuracy_drop}; try "
                "--calibration entropy or mse, or a cross-layer-equalization,bias-correction pipeline"
            )
    flash_budget = options.flash_budget or target.flash_bytes
    ram_budget = options.ram_budget or target.ram_bytes
    if flash_budget and sizes.get("flash_bytes", 0) > flash_budget:
        failures.append(
            f"flash {sizes['flash_bytes']} B exceeds the budget of {flash_budget} B by "
            f"{sizes['flash_bytes'] - flash_budget} B; try --quantize int8 or a smaller model"
        )
    if ram_budget and sizes.get("peak_ram_bytes", 0) > ram_budget:
        failures.append(
            f"peak RAM {sizes['peak_ram_bytes']} B exceeds the budget of {ram_budget} B by "
            f"{sizes['peak_ram_bytes'] - ram_budget} B; try --quantize int8 or a smaller input"
        )
    return failures


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
    prepared = prepare(source, options, progress)
    from edgec.check import check_model

    start = time.perf_counter()
    legal = legalize(prepared, target, progress)
    graph = legal.graph
    timings: dict[str, Any] = {**prepared.seconds, "legalize": time.perf_counter() - start}
    # The import path and the legalization already ran on this graph: check what is left, as it is.
    check_model(graph, target.name, pipeline="", legalize=False).raise_if_unsupported()
    name = options.name or _c_identifier(source.stem)
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
        manifest_stub = {**_signature(prepared), "target": {"name": target.name}}
        start = time.perf_counter()
        with progress.step("measuring the artifact against onnxruntime"):
            error = _measure_error(
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
        failures = _budget_gates(target, sizes, error, options)
        legalization = _pass_records(legal)
        manifest = {
            "schema": 1,
            "edgec_version": edgec.__version__,
            "name": name,
            "model": {"file": source.name, "sha256": sha256_file(source)},
            **_signature(prepared),
            "target": {**target.describe(), "tvm_target": target.tvm_target()},
            "pipeline": prepared.pipeline,
            "pipeline_notes": prepared.run.notes,
            "frozen_inputs": prepared.frozen,
            "passes": _pass_records(prepared.run),
            "legalization": legalization,
            "memory": memory_section(legalization, artifact.details),
            "capabilities": prepared.context.capabilities.as_dict()
            if prepared.context.capabilities
            else None,
            "precision": {node: built.as_dict() for node, built in sorted(lowered.nodes.items())},
            "graph": {
                "nodes_original": len(prepared.original.nodes),
                "nodes_optimized": len(prepared.graph.nodes),
                "macs": cost.macs,
                "params": cost.params,
            },
            "sizes": sizes,
            "error": error,
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


def run_build(
    build_dir: str | Path, inputs: Path, repeat: int = 0
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Runs a built artifact on a .npz of inputs; returns outputs by name and per-run seconds."""
    from edgec.manifest import read_manifest
    from edgec.targets import get_target

    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    target = get_target(manifest["target"]["name"])
    arrays = read_npz(inputs)
    expected = {i["name"]: i for i in manifest["inputs"]}
    missing = sorted(set(expected) - set(arrays))
    unknown = sorted(set(arrays) - set(expected) - {LABEL_KEY})
    if missing or unknown:
        raise EdgecError(
            f"'{inputs}': inputs {'missing ' + str(missing) if missing else ''}"
            f"{' unexpected ' + str(unknown) if unknown else ''}; the model's inputs are {sorted(expected)}"
        )
    ordered = []
    for spec in manifest["inputs"]:
        array = arrays[spec["name"]]
        if list(array.shape) != spec["shape"] or array.dtype.name != spec["dtype"]:
            raise EdgecError(
                f"'{inputs}': input '{spec['name']}' is {array.dtype.name}{list(array.shape)}, "
                f"the model expects {spec['dtype']}{spec['shape']}"
            )
        ordered.append(array)
    outputs, times = target.run(build_dir, manifest, ordered, repeat)
    names = [o["name"] for o in manifest["outputs"]]
    return dict(zip(names, outputs, strict=True)), times
