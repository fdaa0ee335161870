"""Microcontroller memory: edgec's arena vs the liveness lower bound vs a naive plan vs TVM's own
``StaticPlanBlockMemory``, with code and weight bytes of the linked image, per model.

python benchmarks/mcu_memory.py [--models digits squeezenet shufflenet] [--target cortex-m4] [--json]

Columns: ``arena`` is edgec's greedy-by-size plan (intermediates + kernel workspaces, element-wise
kernels in place); ``bound`` the liveness lower bound of the same buffers; ``naive`` every buffer
its own region; ``tvm stock`` the bytes of the ``alloc_storage`` calls TVM's planner leaves (it
counts the outputs but not the kernel workspaces, which TVM's runtime allocates separately);
``code``/``weights``/``flash`` from ``<prefix>size`` on the linked image; ``stack`` the static estimate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx
from _common import scratch
from rich.console import Console
from rich.table import Table

from edgec.ir import EdgeGraph
from edgec.targets import get_target
from edgec.zoo import light_model

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits" / "digits_cnn.onnx"


def load(name: str) -> onnx.ModelProto:
    return onnx.load(DIGITS) if name == "digits" else light_model(name, logits=True)


def measure(name: str, target_name: str) -> dict:
    target = get_target(target_name)
    start = time.perf_counter()
    with scratch() as folder:
        legal = target.legalize(EdgeGraph.from_onnx(load(name))).graph
        artifact = target.build(target.lower(legal).module, Path(folder), name)
    sizes = artifact.sizes
    return {
        "model": name,
        "target": target_name,
        **{k: sizes[k] for k in sizes},
        "in_place_steps": artifact.details["in_place_steps"],
        "workspace_bytes": artifact.details["workspace_bytes"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "squeezenet", "shufflenet"])
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = [measure(name, args.target) for name in args.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "model",
        "arena B",
        "bound B",
        "arena/bound",
        "naive B",
        "tvm stock B",
        "workspace B",
        "in-place",
        "code B",
        "weights B",
        "flash B",
        "stack B",
        "build s",
        box=None,
        title=f"runtime-free C memory on {args.target}",
    )
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['arena_bytes']:,}",
            f"{r['arena_lower_bound_bytes']:,}",
            f"{r['arena_bytes'] / max(r['arena_lower_bound_bytes'], 1):.3f}",
            f"{r['arena_naive_bytes']:,}",
            f"{r['arena_tvm_stock_plan_bytes']:,}",
            f"{r['workspace_bytes']:,}",
            str(r["in_place_steps"]),
            f"{r['code_bytes']:,}",
            f"{r['weights_bytes']:,}",
            f"{r['flash_bytes']:,}",
            f"{r['stack_bytes']:,}",
            f"{r['seconds']:.1f}",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
