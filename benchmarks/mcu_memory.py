"""Microcontroller memory, int8: today's arena (every layer output whole) against the memory-planned
build (conv + pool fused, row-streaming convs in place, row bands chosen under a RAM budget), with
the executed instructions each costs and a bit-exactness check against the x86 integer build.

python benchmarks/mcu_memory.py [--models digits mnist mobilenet_v2] [--target cortex-m4]
                                [--budgets board 65536] [--inferences 2] [--json]

Per model: ``today`` is the build with ``--no-memory-planning`` (its ``bound`` the liveness lower
bound of its own buffers: the best any placement of those tensors reaches); ``layer-at-a-time``
the arena of a CMSIS-NN-style runtime, computed on the unfused legal graph (the largest
``input + output`` of a layer, pools in place, reshapes free); then one memory-planned build per
budget (``board``: the target's RAM, else bytes; the planner takes the fewest recomputed MACs that
fit). Instructions per inference are counted under qemu-system-arm with the TCG plugin of
``mcu_cycles.py``; ``overhead`` is the planned build's extra instructions over today's. ``exact``:
the planned build's outputs under qemu equal the x86 integer build's on the same input, byte for
byte. The models: the digits CNN of ``examples/digits`` (its calibration set), and the MNIST-sized
CNN and MobileNetV2-0.35 at 96x96 of ``edgec.architectures`` (seeded random weights; calibrated on
16 seeded random images in [0, 1)).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import onnx
from _common import scratch
from mcu_cycles import build_plugin, count_inferences

import edgec
from edgec.architectures import mnist_cnn, mobilenet_v2
from edgec.ir import EdgeGraph, infer_shapes
from edgec.targets import get_target
from edgec.targets.legalize.memory_model import layer_at_a_time_bytes

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
BUILDERS = {"mnist": mnist_cnn, "mobilenet_v2": mobilenet_v2}


def quantized(name: str, folder: Path) -> onnx.ModelProto:
    """The model quantized to int8 (QDQ) by edgec with its calibration set."""
    if name == "digits":
        source, calib = DIGITS / "digits_cnn.onnx", DIGITS / "digits_calib.npz"
    else:
        model = BUILDERS[name]()
        source, calib = folder / f"{name}.onnx", folder / f"{name}_calib.npz"
        onnx.save(model, str(source))
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        images = np.random.default_rng(1).random((16, *shape[1:])).astype(np.float32)
        np.savez(calib, **{model.graph.input[0].name: images})
    out = folder / f"{name}_int8.onnx"
    edgec.optimize(source, out, pipeline="default,quantize", calib=calib)
    return onnx.load(str(out))


def build(target, model: onnx.ModelProto, out: Path, name: str) -> tuple[dict, EdgeGraph, dict]:
    """Builds ``model``; returns the artifact's sizes and details, the legal graph and the
    legalization's pass stats by pass name."""
    legalized = target.legalize(EdgeGraph.from_onnx(model))
    out.mkdir(parents=True)
    start = time.perf_counter()
    artifact = target.build(target.lower(legalized.graph).module, out, name)
    stats = {record.name: record.stats for record in legalized.records}
    return (
        {**artifact.sizes, **artifact.details, "build_seconds": time.perf_counter() - start},
        legalized.graph,
        stats,
    )


def measure(
    name: str, target_name: str, budgets: list[str], inferences: int, folder: Path, plugin: Path
) -> list[dict]:
    model = quantized(name, folder)
    graph = EdgeGraph.from_onnx(model)
    sample = np.abs(np.random.default_rng(0).standard_normal(graph.inputs[0].shape)).astype(np.float32)
    board = get_target(target_name)
    x86 = get_target("x86")
    x86_dir = folder / f"{name}-x86"
    x86_dir.mkdir()
    x86.build(x86.lower(x86.legalize(graph.copy()).graph).module, x86_dir, name)
    manifest = {
        "inputs": [{"name": t.name, "dtype": "float32", "shape": list(t.shape)} for t in graph.inputs],
        "outputs": [{"name": t.name, "dtype": "float32", "shape": list(t.shape)} for t in graph.outputs],
    }
    reference = x86.run(x86_dir, manifest, [sample[None]])[0]

    def instructions(target, out: Path) -> float:
        work = out / "run"
        work.mkdir()
        _, counts = count_inferences(
            target, out, name, [sample], len(graph.outputs), plugin, work, inferences
        )
        return (counts[inferences] - counts[0]) / inferences

    today_target = dataclasses.replace(board, memory_planning=False)
    today, unfused, _ = build(today_target, model, folder / f"{name}-today", name)
    infer_shapes(unfused)
    today_instructions = instructions(today_target, folder / f"{name}-today")
    rows = []
    for budget in budgets:
        planned = board if budget == "board" else dataclasses.replace(board, ram_bytes=int(budget))
        out = folder / f"{name}-{budget}"
        new, _, stats = build(planned, model, out, name)
        outputs = planned.run(out, manifest, [sample[None]])[0]
        exact = all(a.tobytes() == b.tobytes() for a, b in zip(outputs, reference, strict=True))
        chosen = stats["plan-memory"]["chosen"]
        planned_instructions = instructions(planned, out)
        rows.append(
            {
                "model": name,
                "budget": planned.ram_bytes,
                "build_seconds": new["build_seconds"],
                "today_arena": today["arena_bytes"],
                "tensor_bound": today["arena_lower_bound_bytes"],
                "layer_at_a_time": layer_at_a_time_bytes(unfused),
                "arena": new["arena_bytes"],
                "stack": new["stack_bytes"],
                "peak_ram": new["peak_ram_bytes"],
                "fused": len(new["memory"]["fused_kernels"]),
                "in_place": len(new["memory"]["in_place"]),
                "bands": f"{chosen['bands']} to {chosen['until']}" if chosen["until"] else "none",
                "extra_macs_share": chosen["extra_macs_share"],
                "today_instructions": today_instructions,
                "instructions": planned_instructions,
                "overhead": planned_instructions / today_instructions - 1,
                "today_code": today["code_bytes"],
                "code": new["code_bytes"],
                "exact": exact,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "mnist", "mobilenet_v2"])
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--budgets", nargs="+", default=["board", "65536"], help="'board' or bytes")
    parser.add_argument("--inferences", type=int, default=2, help="timed inferences per counted run")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    with scratch() as name:
        folder = Path(name)
        plugin = build_plugin(folder)
        rows = [
            r
            for m in args.models
            for r in measure(m, args.target, args.budgets, args.inferences, folder, plugin)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "model", "budget B", "today B", "bound B", "layer-at-a-time B", "new arena B", "today/new",
        "new/layer", "stack B", "row bands", "in place", "instr today", "instr new", "overhead", "code B",
        "exact", box=None, title=f"int8 on {args.target}: arena today vs memory-planned",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["model"], f"{r['budget']:,}", f"{r['today_arena']:,}", f"{r['tensor_bound']:,}",
            f"{r['layer_at_a_time']:,}", f"{r['arena']:,}", f"{r['today_arena'] / r['arena']:.2f}x",
            f"{r['arena'] / r['layer_at_a_time']:.2f}", f"{r['stack']:,}", r["bands"], str(r["in_place"]),
            f"{r['today_instructions']:,.0f}", f"{r['instructions']:,.0f}", f"{r['overhead']:+.1%}",
            f"{r['today_code']:,} -> {r['code']:,}", "yes" if r["exact"] else "NO",
        )  # fmt: skip
    Console(width=240).print(table)


if __name__ == "__main__":
    main()
