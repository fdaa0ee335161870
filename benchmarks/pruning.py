"""Pruning, measured: what the dependency groups allow and what the built model gains.

python benchmarks/pruning.py [--models resnet50 mobilenet_style ...] [--ratios 0.3 0.5] [--repeat 20]
                             [--mcu-models digits mobilenet_style yolo_style] [--no-x86] [--no-mcu]
                             [--no-digits] [--no-sparse] [--json]

Tables, all from one run on this machine:

1. structure: each model pruned at the first ratio with the x86 target's ``round_to``: groups,
   MACs and parameters before/after, the relative output error (seeded random inputs), whether the
   ONNX checker (full check) and onnxruntime accept the result with the original output shapes,
   and why groups were left alone.
2. x86 latency per ratio: the MAC reduction factor, edgec's build before/after and its speedup,
   the speedup divided by the MAC factor (Torch-Pruning's ResNet-50 figure: 2.2x / 3.9x = 0.57),
   and onnxruntime on the same models (the original, and the pruned ONNX edgec wrote).
3. Cortex-M4: executed instructions per inference under qemu-system-arm (the TCG plugin of
   ``mcu_cycles.py``) before/after, for models that fit the board (the large ones do not).
4. digits: top-1 accuracy before recovery after channel pruning (with and without bias
   compensation) and unstructured/N:M sparsity, and the budgeted mode at one point of accuracy.
5. sparse weights (``benchmarks/sparse_weights.py``): the digits CNN at 0/50/75/80 % and 2:4 with
   int8, stored sparse against dense (bytes, accuracy, Cortex-M4 image and instructions, bit-exact
   checks), and x86 latency of sparse against dense builds (``--no-sparse`` skips it).

The light models carry seeded random weights (``edgec.zoo``); ``mobilenet_style`` and
``yolo_style`` are built by ``edgec.architectures``. Latencies are the minimum over rounds that
interleave the variants (the machine may be shared; its load drifts): compare ratios measured in
this run, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _common import interleaved_minimum, onnxruntime_latency, save_with_inputs, scratch
from mcu_cycles import DIGITS, build_plugin, count_inferences
from rich.console import Console
from rich.table import Table
from sparse_weights import digits_rows as sparse_digits_rows
from sparse_weights import latency_rows as sparse_latency_rows
from sparse_weights import print_tables as print_sparse_tables

import edgec
from edgec.architectures import mobilenet_style, yolo_style
from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager
from edgec.run import run_build
from edgec.targets import get_target
from edgec.verify import random_inputs, run_onnx
from edgec.zoo import light_model

LIGHT = ("resnet50", "squeezenet", "inception_v1", "densenet121", "shufflenet")
TORCH_PRUNING_SPEEDUP_PER_MAC = 0.57


def x86_model(name: str) -> onnx.ModelProto:
    if name == "mobilenet_style":
        return mobilenet_style(size=224)
    if name == "yolo_style":
        return yolo_style(size=320)
    return light_model(name, logits=True)


def mcu_model(name: str) -> onnx.ModelProto:
    """Versions that fit a Cortex-M4 board (1 MiB flash, 128 KiB RAM)."""
    if name == "mobilenet_style":
        return mobilenet_style(size=32, classes=10, width=0.5)
    if name == "yolo_style":
        return yolo_style(size=64, width=0.25)
    return onnx.load(str(DIGITS / "digits_cnn.onnx"))


def prune_record(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in manifest["passes"] if r["name"] == "prune-channels")


def accepted(original: onnx.ModelProto, pruned_path: Path) -> str:
    """``yes`` when the ONNX checker (full) and onnxruntime accept the pruned model with the
    original's output names and shapes, else what failed."""
    pruned = onnx.load(str(pruned_path))
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except onnx.checker.ValidationError as exc:
        return f"checker: {str(exc).splitlines()[0]}"
    feeds = random_inputs(EdgeGraph.from_onnx(original))
    before, after = run_onnx(original, feeds), run_onnx(pruned, feeds)
    if {k: v.shape for k, v in before.items()} != {k: v.shape for k, v in after.items()}:
        return "onnxruntime: output shapes changed"
    return "yes"


def _edgec_times(build: Path, inputs: Path) -> list[float]:
    return run_build(build, inputs, 5)[1]


def _ort_times(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int) -> list[float]:
    return [onnxruntime_latency(model, feeds, 5, threads)]


def x86_rows(
    names: list[str], ratios: list[float], repeat: int, threads: int, folder: Path
) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        model = x86_model(name)
        path, feeds, inputs = save_with_inputs(model, name, folder)
        builds = {0.0: (folder / f"{name}-base", edgec.compile(path, folder / f"{name}-base", target="x86"))}
        for ratio in ratios:
            build = folder / f"{name}-{ratio}"
            builds[ratio] = (build, edgec.compile(path, build, target="x86", prune_channels=ratio))
        # onnxruntime runs what edgec wrote (import path and fusion applied) with and without pruning.
        optimized = {r: onnx.load(str(b / "optimized.onnx")) for r, (b, _) in builds.items()}
        rounds = max(1, repeat // 5)
        edgec_ms = interleaved_minimum(
            {r: partial(_edgec_times, b, inputs) for r, (b, _) in builds.items()}, rounds
        )
        ort_ms = interleaved_minimum(
            {r: partial(_ort_times, m, feeds, threads) for r, m in optimized.items()}, rounds
        )
        base = builds[0.0][1]
        for ratio in ratios:
            build, result = builds[ratio]
            stats = prune_record(result.manifest)["stats"]
            macs = stats.get("macs", [base.manifest["graph"]["macs"]] * 2)
            speedup = edgec_ms[0.0] / edgec_ms[ratio]
            rows.append(
                {
                    "model": name,
                    "ratio": ratio,
                    "round_to": stats["round_to"],
                    "groups": stats["groups"],
                    "pruned_groups": stats.get("pruned_groups", 0),
                    "macs": macs,
                    "params": stats.get("params"),
                    "mac_reduction": stats.get("mac_reduction", 0.0),
                    "param_reduction": stats.get("param_reduction", 0.0),
                    "relative_error": stats.get("error", {}).get("relative"),
                    "accepted": accepted(model, build / "optimized.onnx"),
                    "left_alone": sorted({n["reason"] for n in stats["left_alone"]}),
                    "edgec_ms": [edgec_ms[0.0], edgec_ms[ratio]],
                    "speedup": speedup,
                    "speedup_per_mac_factor": speedup / (macs[0] / macs[1]),
                    "ort_ms": [ort_ms[0.0], ort_ms[ratio]],
                    "artifact_max_abs": result.manifest["error"]["artifact_vs_original"]["max_abs"],
                }
            )
    return rows


def mcu_rows(
    names: list[str], ratios: list[float], folder: Path, inferences: int = 2
) -> list[dict[str, Any]]:
    target = get_target("cortex-m4")
    plugin = build_plugin(folder)
    rows = []
    for name in names:
        model = mcu_model(name)
        path = folder / f"mcu-{name}.onnx"
        onnx.save(model, str(path))
        inputs = [
            random_inputs(EdgeGraph.from_onnx(model), seed=0)[t.name]
            for t in EdgeGraph.from_onnx(model).inputs
        ]
        counts = {}
        for ratio in (0.0, *ratios):
            build = folder / f"mcu-{name}-{ratio}"
            result = edgec.compile(
                path, build, target="cortex-m4", prune_channels=ratio or None, name="model"
            )
            work = build.parent / f"{build.name}-run"
            work.mkdir()
            _, runs = count_inferences(
                target, build, "model", inputs, len(model.graph.output), plugin, work, inferences
            )
            counts[ratio] = {
                "instructions": (runs[inferences] - runs[0]) / inferences,
                "macs": result.manifest["graph"]["macs"],
                "flash_bytes": result.manifest["sizes"]["flash_bytes"],
            }
        for ratio in ratios:
            before, after = counts[0.0], counts[ratio]
            rows.append(
                {
                    "model": name,
                    "ratio": ratio,
                    "macs": [before["macs"], after["macs"]],
                    "instructions": [before["instructions"], after["instructions"]],
                    "flash_bytes": [before["flash_bytes"], after["flash_bytes"]],
                    "speedup": before["instructions"] / after["instructions"],
                    "mac_factor": before["macs"] / after["macs"],
                }
            )
    return rows


def digits_rows() -> list[dict[str, Any]]:
    """Accuracy before recovery of the digits CNN (BatchNorm folded first, as ``default`` does)."""
    model = onnx.load(str(DIGITS / "digits_cnn.onnx"))
    evaluation = dict(np.load(DIGITS / "digits_test.npz"))
    calibration = dict(np.load(DIGITS / "digits_calib.npz"))
    graph = PassManager("default", PassContext()).run(EdgeGraph.from_onnx(model)).graph
    rows = []
    for pipeline in (
        "prune-channels{ratio=0.5}",
        "prune-channels{ratio=0.5,compensate=false}",
        "prune-channels{ratio=0.3}",
        "prune-channels{budget=0.01}",
        "prune-channels{target_macs=0.5}",
        "prune-magnitude{sparsity=0.5}",
        "prune-magnitude{sparsity=0.75}",
        "prune-magnitude{sparsity=0.8}",
        "prune-magnitude{sparsity=0.8,scope=global}",
        "prune-nm{n=2,m=4}",
    ):
        ctx = PassContext(evaluation=evaluation, calibration=calibration)
        stats = PassManager(pipeline, ctx).run(graph).records[-1].stats
        rows.append(
            {
                "pipeline": pipeline,
                "accuracy": [stats["accuracy"]["original"], stats["accuracy"]["pruned"]],
                "mac_reduction": stats.get("mac_reduction"),
                "sparsity": stats.get("sparsity", [None, None])[1],
                "budget": {k: v for k, v in stats.get("budget", {}).items() if k != "table"} or None,
            }
        )
    return rows


def _table(title: str, *columns: str) -> Table:
    return Table(*columns, box=None, title=title)


def print_tables(report: dict[str, Any], threads: str) -> None:
    console = Console(width=200)
    rows = report.get("x86", [])
    if rows:
        first = rows[0]["ratio"]
        title = f"structure at {first:.0%} channels (x86's round_to; prune-channels after import,default)"
        table = _table(title, "model", "groups (pruned)", "round_to", "MACs before → after",
                       "params before → after", "MACs -", "params -", "rel. error", "checker+ORT",
                       "left alone")  # fmt: skip
        for r in (r for r in rows if r["ratio"] == first):
            params = f"{r['params'][0]:,} → {r['params'][1]:,}" if r["params"] else ""
            table.add_row(
                r["model"], f"{r['groups']} ({r['pruned_groups']})", str(r["round_to"]),
                f"{r['macs'][0]:,} → {r['macs'][1]:,}", params, f"{r['mac_reduction']:.1%}",
                f"{r['param_reduction']:.1%}", f"{r['relative_error']:.3g}", r["accepted"],
                "; ".join(r["left_alone"])[:70],
            )  # fmt: skip
        console.print(table)
        title = (
            f"x86 latency, minimum over interleaved rounds ({threads}); Torch-Pruning ResNet-50: "
            "speedup/MAC factor = 0.57"
        )
        table = _table(title, "model", "channels", "MAC factor", "edgec ms before", "after", "speedup",
                       "speedup/MAC", "ORT ms before", "after", "ORT speedup")  # fmt: skip
        for r in rows:
            table.add_row(
                r["model"], f"{r['ratio']:.0%}", f"{r['macs'][0] / r['macs'][1]:.2f}x",
                f"{r['edgec_ms'][0]:.2f}", f"{r['edgec_ms'][1]:.2f}", f"{r['speedup']:.2f}x",
                f"{r['speedup_per_mac_factor']:.2f}", f"{r['ort_ms'][0]:.2f}", f"{r['ort_ms'][1]:.2f}",
                f"{r['ort_ms'][0] / r['ort_ms'][1]:.2f}x",
            )  # fmt: skip
        console.print(table)
    if report.get("mcu"):
        title = "Cortex-M4 (qemu mps2-an386, fp32, round_to 1): executed instructions per inference"
        table = _table(title, "model", "channels", "MACs before → after", "instr/inference before", "after",
                       "speedup", "MAC factor", "flash B before → after")  # fmt: skip
        for r in report["mcu"]:
            table.add_row(
                r["model"], f"{r['ratio']:.0%}", f"{r['macs'][0]:,} → {r['macs'][1]:,}",
                f"{r['instructions'][0]:,.0f}", f"{r['instructions'][1]:,.0f}", f"{r['speedup']:.2f}x",
                f"{r['mac_factor']:.2f}x", f"{r['flash_bytes'][0]:,} → {r['flash_bytes'][1]:,}",
            )  # fmt: skip
        console.print(table)
    if report.get("digits"):
        title = "digits CNN, 450 test images, before recovery (calibration: 200 training images)"
        table = _table(title, "pipeline (after default)", "accuracy", "MACs -", "sparsity", "budget")
        for r in report["digits"]:
            budget = r["budget"]
            note = ""
            if budget:
                note = f"met={budget.get('met', budget.get('targets_met'))}, ratios {budget['ratios']}"
            table.add_row(
                r["pipeline"], f"{r['accuracy'][0]:.4f} → {r['accuracy'][1]:.4f}",
                f"{r['mac_reduction']:.1%}" if r["mac_reduction"] is not None else "",
                f"{r['sparsity']:.0%}" if r["sparsity"] is not None else "", note,
            )  # fmt: skip
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*LIGHT, "mobilenet_style", "yolo_style"])
    parser.add_argument("--mcu-models", nargs="+", default=["digits", "mobilenet_style", "yolo_style"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="threads of both edgec and onnxruntime")
    parser.add_argument("--no-x86", action="store_true")
    parser.add_argument("--no-mcu", action="store_true")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--no-sparse", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # The same thread count on both sides (one by default: the machine may be shared).
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    threads = f"edgec and onnxruntime {args.threads} thread(s) each"
    report: dict[str, Any] = {}
    with scratch() as name:
        folder = Path(name)
        if not args.no_x86:
            report["x86"] = x86_rows(args.models, args.ratios, args.repeat, args.threads, folder)
        if not args.no_mcu:
            report["mcu"] = mcu_rows(args.mcu_models, args.ratios, folder)
        if not args.no_sparse:
            points = ["0", "0.5", "0.75", "0.8", "2:4"]
            report["sparse"] = {
                "digits": sparse_digits_rows(points, folder, args.repeat, not args.no_mcu, 2),
                "latency": sparse_latency_rows(["squeezenet", "mobilenet_style"], 0.8, folder, args.repeat),
            }
    if not args.no_digits:
        report["digits"] = digits_rows()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_tables(report, threads)
    if report.get("sparse"):
        print_sparse_tables(report["sparse"])


if __name__ == "__main__":
    main()
