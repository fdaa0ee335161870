"""Executed instructions per inference on Cortex-M under qemu-system-arm, and per MAC, next to the
CMSIS-NN anchor (2.30 instructions per MAC for a whole int8 CNN on Cortex-M4).

python benchmarks/mcu_cycles.py [--targets cortex-m4] [--variants fp32 int8] [--inferences 4] [--kernels]
                                [--json]

QEMU has no cycle counter, so this counts executed guest instructions with a small TCG plugin
(``benchmarks/qemu_plugin/insn_count.c``), compiled with the host gcc into a temporary folder at run
time (Debian ships no plugin and no ``qemu-plugin.h``; the plugin declares the few API functions it
uses). Each model is built as the test harness firmware and run twice: with ``N`` timed inferences
after the first one, and with none; the difference divided by ``N`` is one inference (startup,
semihosting file I/O and the first inference cancel out; the ``N`` calls to ``clock()`` and the
``fprintf`` of the times do not, a few hundred instructions each, under 0.1% here). MACs come from
``edgec.ir.graph_cost`` on the float model (the int8 model does the same multiply-adds).

``--kernels`` also counts each kernel function of the image on its own (the plugin's ``lo``/``hi``
arguments: only blocks starting inside the function's symbol), and for the conv/dense kernels
divides by their MACs (weight elements x output elements / output channels, from the kernel's
parameters), the figure to hold against CMSIS-NN's 1.86 (3x3 conv) and 1.89 (FC) per MAC.

Variants: ``fp32`` (the digits CNN as shipped), ``int8`` (its QDQ form from
``edgec.optimize(pipeline="default,quantize")``, integer kernels), ``int8-nodsp`` (the same with
edgec's Arm DSP (SMLAD) conv/dense kernels switched off (``--no-micro-kernels``); the same as ``int8`` on
cores without the DSP extension), ``int8-double`` (the same model with TFLite's double-rounding
requantization instead of edgec's default single rounding, ``--rounding double``), and ``fp16``
(``quantize{scheme=fp16,compute=float16}``: float16 kernels, only on a core with fp16 arithmetic:
``--targets cortex-m55 --variants fp32 fp16``).
Instructions are not cycles: on a real M4, cycles are perhaps 1.2-1.6x instructions (QEMU does not
model the pipeline).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import edgec
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, graph_cost, infer_shapes
from edgec.targets import get_target
from edgec.targets.runners import build_harness, default_timeout, qemu_system_command
from edgec.targets.toolchains import require_tool

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits"
PLUGIN_SOURCE = Path(__file__).resolve().parent / "qemu_plugin" / "insn_count.c"
# CMSIS-NN on Cortex-M4 (shared/research/cortex-m-int8-anchor.md): whole int8 CNN, 4.24 M MACs.
CMSIS_NN_INSTRUCTIONS_PER_MAC = 2.30
_COUNT = re.compile(r"^edgec-insn-count: (\d+)$", re.M)


def build_plugin(folder: Path) -> Path:
    """Compiles the instruction-count plugin with the host gcc; returns the ``.so``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise EdgecError("the host gcc is needed to build the qemu plugin (apt-get install gcc)")
    library = folder / "libinsn_count.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(library), str(PLUGIN_SOURCE)],
        check=True,
        capture_output=True,
        text=True,
    )
    return library


def emulator_command(target, image: Path) -> list[str]:
    """The qemu command that runs a linked harness: qemu-system-arm for a bare-metal core, else
    qemu-aarch64 from Debian's ``qemu-user`` (the static build ``edgec run`` uses loads no plugins)."""
    if target.bare_metal:
        return qemu_system_command(target.machine, target.qemu_cpu, image)
    return [require_tool("qemu-aarch64", "qemu-user"), "-cpu", target.qemu_cpu, str(image)]


def count_instructions(
    command: list[str], plugin: Path, cwd: Path, address_range: tuple[int, int] | None = None
) -> int:
    """Runs a qemu command with the plugin loaded; returns the executed instructions (only those in
    blocks starting in ``address_range``, when given)."""
    spec = str(plugin) + (f",lo={address_range[0]},hi={address_range[1]}" if address_range else "")
    full = [command[0], "-plugin", spec, "-d", "plugin", *command[1:]]
    done = subprocess.run(
        full, cwd=cwd, capture_output=True, text=True, timeout=default_timeout(), check=False
    )
    log = done.stdout + done.stderr
    match = _COUNT.search(log)
    if done.returncode != 0 or "edgec-harness: ok" not in log or match is None:
        tail = "\n".join(log.strip().splitlines()[-5:])
        raise EdgecError(f"qemu run failed (exit {done.returncode}): {tail}")
    return int(match.group(1))


def digits_models(folder: Path) -> dict[str, onnx.ModelProto]:
    int8 = folder / "digits_int8.onnx"
    edgec.optimize(
        DIGITS / "digits_cnn.onnx", int8, pipeline="default,quantize", calib=DIGITS / "digits_calib.npz"
    )
    fp16 = folder / "digits_fp16.onnx"
    edgec.optimize(
        DIGITS / "digits_cnn.onnx",
        fp16,
        pipeline="default,quantize{scheme=fp16,compute=float16}",
        calib=DIGITS / "digits_calib.npz",
    )
    return {
        "fp32": onnx.load(str(DIGITS / "digits_cnn.onnx")),
        "int8": onnx.load(str(int8)),
        "fp16": onnx.load(str(fp16)),
    }


def macs_of(model: onnx.ModelProto) -> int:
    graph = EdgeGraph.from_onnx(model)
    infer_shapes(graph)
    return graph_cost(graph).macs


def kernel_symbols(target, image: Path) -> dict[str, tuple[int, int]]:
    """``{kernel: (start, end)}``: from each ``*_compute_`` function of the image to the next named
    function, which covers the kernel's parallel-loop body (LLVM emits it, unnamed, right after)."""
    nm = target.cross().tool("nm")
    listing = subprocess.run([nm, "-n", str(image)], capture_output=True, text=True, check=True).stdout
    functions = []
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            functions.append((int(parts[0], 16) & ~1, parts[2]))
    functions.sort()
    symbols = {}
    for (start, name), (end, _) in itertools.pairwise(functions):
        if name.endswith("_compute_") and end > start:
            symbols[name.removesuffix("_compute_")] = (start, end)
    return symbols


def kernel_macs(module, prefix: str) -> dict[str, int]:
    """MACs of the conv2d/matmul kernels: weight elements x output elements / output channels."""
    import tvm

    macs = {}
    for gv, func in module.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or not gv.name_hint.startswith(
            ("fused_conv2d", "fused_matmul")
        ):
            continue
        weight, out = (math.prod(int(d) for d in func.params[i].shape) for i in (1, -1))
        macs[prefix + gv.name_hint] = weight * out // int(func.params[-1].shape[-1])
    return macs


def count_inferences(
    target,
    build: Path,
    name: str,
    inputs: list[np.ndarray],
    outputs: int,
    plugin: Path,
    work: Path,
    inferences: int,
) -> tuple[Path, dict[int, int]]:
    """Links the harness around a built artifact (C prefix ``name``) and counts the instructions of
    a run with no timed inference and of one with ``inferences``; returns the image and both counts."""
    image = build_harness(target, [build], [(name, len(inputs), outputs)], work)
    for index, array in enumerate(inputs):
        (work / f"in{index}.bin").write_bytes(np.ascontiguousarray(array).tobytes())
    command = emulator_command(target, image)
    counts = {}
    for repeat in (0, inferences):
        (work / "edgec_repeat.txt").write_text(f"{repeat}\n")
        counts[repeat] = count_instructions(command, plugin, work)
    return image, counts


def measure(
    model: onnx.ModelProto,
    variant: str,
    target_name: str,
    plugin: Path,
    folder: Path,
    inferences: int,
    kernels: bool = False,
) -> dict:
    """Builds ``model`` for the target and counts the instructions of one inference."""
    target = get_target(target_name)
    if variant == "int8-double":
        target = dataclasses.replace(target, requantize_rounding="double")
    out = folder / f"{variant}-{target_name}"
    work = out / "run"
    work.mkdir(parents=True)
    if variant == "int8-nodsp":
        target = dataclasses.replace(target, micro_kernels=False)
    graph = EdgeGraph.from_onnx(model)
    start = time.perf_counter()
    module = target.lower(target.legalize(graph).graph).module
    artifact = target.build(module, out, "digits")
    build_seconds = time.perf_counter() - start
    sample = np.load(DIGITS / "digits_test.npz")["input"][:1, None].astype(np.float32)
    image, counts = count_inferences(
        target, out, "digits", [sample], len(graph.outputs), plugin, work, inferences
    )
    command = emulator_command(target, image)
    per_inference = (counts[inferences] - counts[0]) / inferences
    macs = macs_of(model)
    per_kernel = {}
    if kernels:
        layer_macs = kernel_macs(module, "digits_")
        for name, span in kernel_symbols(target, image).items():
            runs = {}
            for repeat in (0, inferences):
                (work / "edgec_repeat.txt").write_text(f"{repeat}\n")
                runs[repeat] = count_instructions(command, plugin, work, span)
            per_kernel[name] = {
                "instructions": (runs[inferences] - runs[0]) / inferences,
                "macs": layer_macs.get(name, 0),
            }
    return {
        "model": "digits",
        "variant": variant,
        "target": target_name,
        "macs": macs,
        "instructions_per_inference": per_inference,
        "instructions_per_mac": per_inference / macs,
        "startup_and_first_inference": counts[0],
        "code_bytes": artifact.sizes["code_bytes"],
        "arena_bytes": artifact.sizes["arena_bytes"],
        "build_seconds": build_seconds,
        "kernels": per_kernel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["cortex-m4"])
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8-nodsp", "int8"])
    parser.add_argument("--inferences", type=int, default=4, help="timed inferences per counted run")
    parser.add_argument("--kernels", action="store_true", help="also count each kernel function")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as name:
        folder = Path(name)
        plugin = build_plugin(folder)
        models = digits_models(folder)
        for target_name in args.targets:
            for variant in args.variants:
                model = models[variant.split("-")[0]]
                rows.append(
                    measure(model, variant, target_name, plugin, folder, args.inferences, args.kernels)
                )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "model",
        "variant",
        "target",
        "MACs",
        "instr/inference",
        "instr/MAC",
        "vs CMSIS-NN",
        "code B",
        "arena B",
        box=None,
        title="executed instructions under qemu-system-arm (TCG plugin count)",
    )
    for r in rows:
        table.add_row(
            r["model"],
            r["variant"],
            r["target"],
            f"{r['macs']:,}",
            f"{r['instructions_per_inference']:,.0f}",
            f"{r['instructions_per_mac']:.2f}",
            f"{r['instructions_per_mac'] / CMSIS_NN_INSTRUCTIONS_PER_MAC:.2f}x",
            f"{r['code_bytes']:,}",
            f"{r['arena_bytes']:,}",
        )
    anchor = ("MNIST CNN (anchor)", "CMSIS-NN int8", "cortex-m4", "4,240,000", "9,760,000")
    table.add_row(
        *anchor, f"{CMSIS_NN_INSTRUCTIONS_PER_MAC:.2f}", "1.00x", "11,900 kernels", "25,920", style="dim"
    )
    console = Console(width=150)
    console.print(table)
    for r in rows:
        if r["kernels"]:
            console.print(kernel_table(r))


def kernel_table(row: dict):
    from rich.table import Table

    table = Table(
        "kernel", "instr/inference", "share", "MACs", "instr/MAC", box=None,
        title=f"{row['variant']} on {row['target']}: per kernel (CMSIS-NN: 3x3 conv 1.86, FC 1.89 per MAC)",
    )  # fmt: skip
    total = row["instructions_per_inference"]
    dense = [0.0, 0]
    for name, k in sorted(row["kernels"].items(), key=lambda item: -item[1]["instructions"]):
        per_mac = f"{k['instructions'] / k['macs']:.2f}" if k["macs"] else ""
        if k["macs"]:
            dense[0] += k["instructions"]
            dense[1] += k["macs"]
        short = name.removeprefix("digits_")
        short = short if len(short) <= 48 else short[:45] + "..."
        table.add_row(
            short, f"{k['instructions']:,.0f}", f"{k['instructions'] / total:.0%}", f"{k['macs']:,}", per_mac
        )
    if dense[1]:
        share = f"{dense[0] / total:.0%}"
        table.add_row("all conv + dense kernels", f"{dense[0]:,.0f}", share, f"{dense[1]:,}",
                      f"{dense[0] / dense[1]:.2f}", style="bold")  # fmt: skip
    return table


if __name__ == "__main__":
    main()
