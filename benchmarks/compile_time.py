"""Compile time: edgec's import (load, import passes, default pipeline) next to onnxslim alone,
per stage; with ``--build``, the whole ``edgec compile`` next to onnxruntime's session creation.

python benchmarks/compile_time.py [--models bvlc_alexnet vgg19] [--weights wheel|random] [--repeat 3]
                                  [--build]

``--weights wheel`` (default) reads the wheel's ``light_*.onnx`` files as they are: their weights
are ``ConstantOfShape`` nodes that onnxslim folds into initializers (vgg19: 548 MB). ``random``
stores seeded random initializers first (``edgec.zoo.light_model``), like a trained export.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import onnx
from _common import save_light_model, scratch
from rich.console import Console
from rich.table import Table

import edgec
from edgec.compile import prepare
from edgec.config import CompileOptions
from edgec.pm import FixedPoint, parse_pipeline
from edgec.zoo import LIGHT_DIR

MODELS = ["bvlc_alexnet", "vgg19", "resnet50", "squeezenet", "inception_v1", "densenet121"]


def _fresh(function, *args):
    """``function(*args)`` in a new process: each measurement starts with a cold allocator and
    imports, like a command-line run, and none inherits another's memory."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _model_path(name: str, weights: str, folder: Path) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx" if weights == "wheel" else save_light_model(name, folder)


def _onnxslim_seconds(path: Path) -> tuple[float, float, float]:
    """Seconds of ``onnxslim.slim(model)`` alone, and for context of ``import onnxslim`` and
    ``onnx.load`` (which edgec's import pays and ``slim(model)`` does not)."""
    start = time.perf_counter()
    import onnxslim

    imported = time.perf_counter() - start
    start = time.perf_counter()
    model = onnx.load(str(path))
    loaded = time.perf_counter() - start
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    start = time.perf_counter()
    onnxslim.slim(model)
    return time.perf_counter() - start, imported, loaded


def _stage_of() -> dict[str, str]:
    """Which column each top-level pass of ``import,default`` is counted in."""
    stages = {}
    for step in parse_pipeline("import"):
        stages[step.name] = "simplify" if step.name == "simplify" else "other import"
    for step in parse_pipeline("default"):
        for inner in step.passes if isinstance(step, FixedPoint) else (step,):
            stages.setdefault(inner.name, "default")
    return stages


STAGES = ("setup", "load", "simplify", "other import", "default", "around passes")


def _edgec_import(path: Path) -> tuple[float, dict[str, float], dict[str, float]]:
    """Total seconds of ``prepare`` (what ``edgec optimize`` spends before writing), seconds per
    stage, and seconds per top-level pass."""
    start = time.perf_counter()
    prepared = prepare(path, CompileOptions())
    total = time.perf_counter() - start
    stage_of = _stage_of()
    stages: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    per_pass: dict[str, float] = defaultdict(float)
    # Pipeline parsing (the first one imports every pass module and plugin), the target registry.
    stages["setup"] = total - prepared.seconds["load"] - prepared.seconds["passes"]
    stages["load"] = prepared.seconds["load"]
    top_level = [record for record in prepared.run.records if record.parent is None]
    for record in top_level:
        stages[stage_of.get(record.name, "default")] += record.seconds
        per_pass[record.name] += record.seconds
    # Instruments (cost deltas, dumps), analysis invalidation and the final shape inference.
    stages["around passes"] = prepared.seconds["passes"] - sum(r.seconds for r in top_level)
    return total, stages, dict(per_pass)


def _import_table(models: list[str], weights: str, repeat: int, folder: Path) -> tuple[Table, Table]:
    table = Table(
        "model",
        "nodes",
        "onnxslim s",
        "edgec import s",
        "ratio",
        *STAGES,
        "(import onnxslim)",
        "(onnx.load)",
        "ratio to all three",
        box=None,
    )
    detail = Table("model", "pass", "seconds", box=None)
    for name in models:
        path = _model_path(name, weights, folder)
        # The fastest of ``repeat`` runs: fresh memory costs this machine more the first time.
        slim, imported, loaded = min(_fresh(_onnxslim_seconds, path) for _ in range(repeat))
        total, stages, per_pass = min(
            (_fresh(_edgec_import, path) for _ in range(repeat)), key=lambda run: run[0]
        )
        nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
        table.add_row(
            name,
            str(nodes),
            f"{slim:.2f}",
            f"{total:.2f}",
            f"{total / slim:.1f}x",
            *(f"{stages[stage]:.2f}" for stage in STAGES),
            f"{imported:.2f}",
            f"{loaded:.2f}",
            f"{total / (slim + imported + loaded):.1f}x",
        )
        for pass_name, seconds in sorted(per_pass.items(), key=lambda item: -item[1])[:5]:
            detail.add_row(name, pass_name, f"{seconds:.2f}")
    return table, detail


def _build_table(models: list[str], weights: str, target: str, folder: Path) -> Table:
    import onnxruntime as ort

    table = Table(
        "model", "ORT session s", "edgec total s", "load", "passes", "lower", "build", "verify", box=None
    )
    for name in models:
        path = _model_path(name, weights, folder)
        start = time.perf_counter()
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ort_seconds = time.perf_counter() - start
        start = time.perf_counter()
        edgec.compile(path, folder / f"{name}-build", target=target)
        total = time.perf_counter() - start
        timings = json.loads((folder / f"{name}-build" / "timings.json").read_text())
        table.add_row(
            name,
            f"{ort_seconds:.2f}",
            f"{total:.2f}",
            *(f"{timings[k]:.2f}" for k in ("load", "passes", "lower", "build", "verify")),
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--weights", choices=("wheel", "random"), default="wheel")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest counts")
    parser.add_argument("--build", action="store_true", help="also time edgec compile vs onnxruntime")
    parser.add_argument("--target", default="x86", help="target of --build")
    args = parser.parse_args()
    console = Console(width=200)
    with scratch() as folder:
        table, detail = _import_table(args.models, args.weights, args.repeat, Path(folder))
        console.print(
            f"edgec import (prepare: load, import, default) vs onnxslim.slim, {args.weights} weights"
        )
        console.print(table)
        console.print("slowest passes (seconds over all their runs)")
        console.print(detail)
        if args.build:
            console.print(f"edgec compile --target {args.target} vs onnxruntime session creation")
            console.print(_build_table(args.models, args.weights, args.target, Path(folder)))


if __name__ == "__main__":
    main()
