"""Compile time: edgec (import, passes, TVM lowering and build) vs onnxruntime session creation.

python benchmarks/compile_time.py [--models squeezenet resnet50] [--target x86]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx
from _common import save_light_model, scratch
from rich.console import Console
from rich.table import Table

import edgec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50"])
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    import onnxruntime as ort

    table = Table(
        "model",
        "nodes",
        "ORT session s",
        "edgec total s",
        "load",
        "passes",
        "lower",
        "build",
        "verify",
        box=None,
    )
    with scratch() as folder:
        folder = Path(folder)
        for name in args.models:
            path = save_light_model(name, folder)
            start = time.perf_counter()
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            ort_seconds = time.perf_counter() - start
            start = time.perf_counter()
            edgec.compile(path, folder / f"{name}-build", target=args.target)
            total = time.perf_counter() - start
            timings = json.loads((folder / f"{name}-build" / "timings.json").read_text())
            nodes = len(onnx.load(str(path)).graph.node)
            table.add_row(
                name,
                str(nodes),
                f"{ort_seconds:.2f}",
                f"{total:.2f}",
                *(f"{timings[k]:.2f}" for k in ("load", "passes", "lower", "build", "verify")),
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
