"""int8 vs fp32 on Cortex-A: executed instructions per inference under qemu-aarch64, and their ratio
(issue 18's goal for cortex-a55: int8 at most 0.6x of fp32, on squeezenet and resnet50).

python benchmarks/cortex_a_int8.py [--targets cortex-a53 cortex-a55 cortex-a76] [--models squeezenet resnet50]
                                   [--no-plain] [--json]

Counted as in ``benchmarks/mcu_cycles.py`` (same TCG plugin, same harness, a run with one
inference minus a run with none; the count is deterministic), with Debian's dynamically linked
``qemu-aarch64`` (package ``qemu-user``: the static ``qemu-aarch64-static`` that ``edgec run``
uses cannot load plugins). Models: the onnx wheel's light architectures with seeded random
weights (:func:`edgec.zoo.light_model`, logits); int8 is edgec's ``default,quantize`` pipeline
calibrated on 4 seeded normal samples (per-channel int8 weights, int8 activations, integer
kernels). Variants per target: ``fp32``, ``int8`` (the target's micro-kernels: ``sdot`` on
cortex-a55/a76, ``smull`` + ``sadalp`` on cortex-a53/a72) and ``int8-plain`` (the same int8 model
with ``--no-micro-kernels``: the vectorised loops every Cortex-A target had before them).
Instructions are not cycles (qemu models no pipeline; one ``sdot`` counts as one instruction like
one ``add``), but on in-order cores such as the A53/A55 they track them closely for these loops.
resnet50 takes about 2-3 minutes per target and variant (build plus two emulated runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from mcu_cycles import build_plugin, count_inferences

import edgec
from edgec.ir import EdgeGraph
from edgec.targets import get_target
from edgec.zoo import light_model

GOAL = 0.6  # issue 18: int8 at most 0.6x of the same target's fp32


def models(name: str, folder: Path) -> dict[str, onnx.ModelProto]:
    """``{"fp32": ..., "int8": ...}`` for a light architecture (int8: edgec's quantizer)."""
    fp32 = light_model(name, logits=True)
    graph = EdgeGraph.from_onnx(fp32)
    rng = np.random.default_rng(0)
    shapes = {t.name: [int(d) for d in t.shape][1:] for t in graph.inputs}
    calibration = {k: rng.standard_normal((4, *s)).astype(np.float32) for k, s in shapes.items()}
    np.savez(folder / f"{name}_calib.npz", **calibration)
    onnx.save(fp32, str(folder / f"{name}.onnx"))
    edgec.optimize(
        folder / f"{name}.onnx",
        folder / f"{name}_int8.onnx",
        pipeline="default,quantize",
        calib=folder / f"{name}_calib.npz",
    )
    return {"fp32": fp32, "int8": onnx.load(str(folder / f"{name}_int8.onnx"))}


def measure(
    model: onnx.ModelProto, name: str, variant: str, target_name: str, plugin: Path, folder: Path
) -> dict:
    """Builds ``model`` for the target and counts the instructions of one inference."""
    target = get_target(target_name)
    if variant == "int8-plain":
        target = dataclasses.replace(target, micro_kernels=False)
    out = folder / f"{name}-{variant}-{target_name}"
    work = out / "run"
    work.mkdir(parents=True)
    graph = EdgeGraph.from_onnx(model)
    start = time.perf_counter()
    lowered = target.lower(target.legalize(graph).graph)
    target.build(lowered.module, out, name)
    build_seconds = time.perf_counter() - start
    sample = np.random.default_rng(1).standard_normal([int(d) for d in graph.inputs[0].shape])
    _, counts = count_inferences(
        target, out, name, [sample.astype(np.float32)], len(graph.outputs), plugin, work, 1
    )
    return {
        "model": name,
        "target": target_name,
        "variant": variant,
        "instructions_per_inference": counts[1] - counts[0],
        "micro_kernels": lowered.details.get("micro_kernels") or {},
        "build_seconds": round(build_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["cortex-a53", "cortex-a55", "cortex-a76"])
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50"])
    parser.add_argument("--no-plain", action="store_true", help="skip the int8 build without micro-kernels")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    variants = ["fp32", "int8"] if args.no_plain else ["fp32", "int8", "int8-plain"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as scratch:
        folder = Path(scratch)
        plugin = build_plugin(folder)
        for name in args.models:
            built = models(name, folder)
            for target_name in args.targets:
                for variant in variants:
                    model = built[variant.split("-")[0]]
                    rows.append(measure(model, name, variant, target_name, plugin, folder))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_table(rows, variants)


def print_table(rows: list[dict], variants: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "model", "target", *(f"{v} instr" for v in variants), "int8/fp32",
        *(["plain/fp32"] if "int8-plain" in variants else []), f"goal <= {GOAL}", "int8 kernels",
        box=None, title="executed instructions per inference under qemu-aarch64 (TCG plugin count)",
    )  # fmt: skip
    by_key = {(r["model"], r["target"], r["variant"]): r for r in rows}
    for model, target in dict.fromkeys((r["model"], r["target"]) for r in rows):
        counts = {v: by_key[(model, target, v)]["instructions_per_inference"] for v in variants}
        ratio = counts["int8"] / counts["fp32"]
        plain = [f"{counts['int8-plain'] / counts['fp32']:.2f}"] if "int8-plain" in counts else []
        kernels = by_key[(model, target, "int8")]["micro_kernels"]
        table.add_row(
            model, target, *(f"{c:,}" for c in counts.values()), f"{ratio:.2f}", *plain,
            "yes" if ratio <= GOAL else "no", ", ".join(f"{k}: {n}" for k, n in kernels.items()) or "-",
        )  # fmt: skip
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
