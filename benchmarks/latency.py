"""x86 latency: edgec's build vs onnxruntime on the same machine, in the same run.

python benchmarks/latency.py [--models squeezenet resnet50] [--repeat 20] [--target x86]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import onnx
from _common import onnxruntime_latency, save_light_model, scratch
from rich.console import Console
from rich.table import Table

import edgec
from edgec.ir import EdgeGraph
from edgec.run import run_build
from edgec.verify import random_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50"])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--target", default="x86")
    args = parser.parse_args()
    table = Table("model", "target", "onnxruntime ms", "edgec ms", "edgec / ORT", "max abs err", box=None)
    with scratch() as folder:
        folder = Path(folder)
        for name in args.models:
            path = save_light_model(name, folder)
            build = folder / f"{name}-build"
            result = edgec.compile(path, build, target=args.target)
            model = onnx.load(str(path))
            feeds = random_inputs(EdgeGraph.from_onnx(model), seed=0)
            import numpy as np

            np.savez(folder / "x.npz", **feeds)
            _, times = run_build(build, folder / "x.npz", repeat=args.repeat)
            ort_ms = 1e3 * onnxruntime_latency(model, feeds, args.repeat)
            edgec_ms = 1e3 * statistics.median(times)
            error = result.manifest["error"]["artifact_vs_original"]["max_abs"]
            table.add_row(
                name,
                args.target,
                f"{ort_ms:.2f}",
                f"{edgec_ms:.2f}",
                f"{edgec_ms / ort_ms:.2f}x",
                f"{error:.2e}",
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
