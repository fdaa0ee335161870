"""Executed instructions per inference on Cortex-M under qemu-system-arm, and per MAC, next to the
CMSIS-NN anchor (2.30 instructions per MAC for a whole int8 CNN on Cortex-M4).

python benchmarks/mcu_cycles.py [--models digits mobilenet] [--targets cortex-m4] [--variants fp32 int8]
                                [--inferences 4] [--kernels] [--json]

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
divides by their MACs (the iteration domain of the kernel's conv2d/matmul block before scheduling),
the figure to hold against CMSIS-NN's 1.86 (3x3 conv) and 1.89 (FC) per MAC, and by their output
elements (what the requantization epilogue runs once for).

Models: ``digits`` (examples/digits, a 1-channel 8x8 input: its first conv has a reduction of 9) and
``mobilenet`` (the MobileNet-style block of the Cortex tests, ``tests/targets/cortex_helpers.py``:
a stride-2 3x3 conv on 3 channels, depthwise, pointwise, pool, dense), quantized with 16 seeded
random calibration inputs.

Variants: ``fp32`` (the model as shipped), ``int8`` (its QDQ form from
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
import sys
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


def model_variants(
    name: str, folder: Path, needed: set[str]
) -> tuple[dict[str, onnx.ModelProto], np.ndarray]:
    """``({variant: model}, one input sample)`` of the model ``name``, for the ``needed`` variants
    among fp32, int8 and fp16."""
    if name == "digits":
        source, calib = DIGITS / "digits_cnn.onnx", DIGITS / "digits_calib.npz"
        sample = np.load(DIGITS / "digits_test.npz")["input"][:1, None].astype(np.float32)
    else:
        # The test module holds the builder: one definition for the tests and this benchmark.
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.targets.cortex_helpers import mobilenet_block_model

        source, calib = folder / "mobilenet.onnx", folder / "mobilenet_calib.npz"
        onnx.save(mobilenet_block_model(), str(source))
        np.savez(calib, x=np.random.default_rng(5).standard_normal((16, 1, 3, 16, 16)).astype(np.float32))
        sample = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    models = {"fp32": onnx.load(str(source))}
    for variant, pipeline in (
        ("int8", "default,quantize"),
        ("fp16", "default,quantize{scheme=fp16,compute=float16}"),
    ):
        path = folder / f"{name}_{variant}.onnx"
        edgec.optimize(source, path, pipeline=pipeline, calib=calib)
        models[variant] = onnx.load(str(path))
    return models, sample


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


def kernel_work(target, graph: EdgeGraph, prefix: str) -> dict[str, tuple[int, int]]:
    """``{kernel: (MACs, output elements)}`` per inference: MACs are the iteration domain of the
    kernel's conv2d/matmul reduction block before scheduling (exact for fused conv + pool kernels,
    whose output is the pooled one), outputs the size of its last parameter, both times the calls
    of the kernel (a patch-wise first layer calls its kernel once per patch)."""
    import tvm
    from tvm import relax, s_tir

    from edgec.targets.tvm.build import lower_for_cpu
    from edgec.targets.tvm.translate import translate

    module = lower_for_cpu(translate(graph), target.tvm_target(), target.memory_planning)
    calls: dict[str, int] = {}

    def count(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.args[0] if expr.args else None, tvm.ir.GlobalVar):
            calls[expr.args[0].name_hint] = calls.get(expr.args[0].name_hint, 0) + 1

    for func in module.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, count)
    work = {}
    for gv, func in module.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        macs = 0
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            stmt = sch.get(block)
            if any(int(iv.iter_type) == 2 for iv in stmt.iter_vars) and (
                "conv2d" in stmt.name_hint or "matmul" in stmt.name_hint
            ):
                macs += math.prod(int(iv.dom.extent) for iv in stmt.iter_vars)
        times = calls.get(gv.name_hint, 1)
        work[prefix + gv.name_hint] = (macs * times, math.prod(int(d) for d in func.params[-1].shape) * times)
    return work


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
    sample: np.ndarray,
    macs: int,
    variant: str,
    target_name: str,
    plugin: Path,
    folder: Path,
    inferences: int,
    kernels: bool = False,
) -> dict:
    """Builds ``model`` for the target and counts the instructions of one inference on ``sample``
    (``macs``: of the float model, which the int8 one does too)."""
    target = get_target(target_name)
    if variant == "int8-double":
        target = dataclasses.replace(target, requantize_rounding="double")
    name = model.graph.name or "model"
    out = folder / f"{name}-{variant}-{target_name}"
    work = out / "run"
    work.mkdir(parents=True)
    if variant == "int8-nodsp":
        target = dataclasses.replace(target, micro_kernels=False)
    graph = EdgeGraph.from_onnx(model)
    start = time.perf_counter()
    legal = target.legalize(graph).graph
    module = target.lower(legal.copy()).module
    artifact = target.build(module, out, "model")
    build_seconds = time.perf_counter() - start
    image, counts = count_inferences(
        target, out, "model", [sample], len(graph.outputs), plugin, work, inferences
    )
    command = emulator_command(target, image)
    per_inference = (counts[inferences] - counts[0]) / inferences
    per_kernel = {}
    if kernels:
        layer_work = kernel_work(target, legal, "model_")
        for kernel, span in kernel_symbols(target, image).items():
            runs = {}
            for repeat in (0, inferences):
                (work / "edgec_repeat.txt").write_text(f"{repeat}\n")
                runs[repeat] = count_instructions(command, plugin, work, span)
            layer_macs, outputs = layer_work.get(kernel, (0, 0))
            per_kernel[kernel] = {
                "instructions": (runs[inferences] - runs[0]) / inferences,
                "macs": layer_macs,
                "outputs": outputs,
            }
    return {
        "model": name,
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
    parser.add_argument("--models", nargs="+", default=["digits"], choices=["digits", "mobilenet"])
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
        for model_name in args.models:
            needed = {variant.split("-")[0] for variant in args.variants}
            models, sample = model_variants(model_name, folder, needed)
            macs = macs_of(models["fp32"])
            for target_name, variant in itertools.product(args.targets, args.variants):
                model = models[variant.split("-")[0]]
                counted = measure(
                    model, sample, macs, variant, target_name, plugin, folder, args.inferences, args.kernels
                )
                rows.append(counted)
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
        "kernel", "instr/inference", "share", "MACs", "instr/MAC", "outputs", "instr/output", box=None,
        title=f"{row['model']} {row['variant']} on {row['target']}: per kernel "
        "(CMSIS-NN: 3x3 conv 1.86, FC 1.89 per MAC)",
    )  # fmt: skip
    total = row["instructions_per_inference"]
    dense = [0.0, 0]
    for name, k in sorted(row["kernels"].items(), key=lambda item: -item[1]["instructions"]):
        per_mac = f"{k['instructions'] / k['macs']:.2f}" if k["macs"] else ""
        if k["macs"]:
            dense[0] += k["instructions"]
            dense[1] += k["macs"]
        short = name.removeprefix("model_")
        short = short if len(short) <= 48 else short[:45] + "..."
        per_output = f"{k['instructions'] / k['outputs']:.1f}" if k["outputs"] else ""
        table.add_row(
            short, f"{k['instructions']:,.0f}", f"{k['instructions'] / total:.0%}", f"{k['macs']:,}", per_mac,
            f"{k['outputs']:,}", per_output,
        )  # fmt: skip
    if dense[1]:
        share = f"{dense[0] / total:.0%}"
        table.add_row("all conv + dense kernels", f"{dense[0]:,.0f}", share, f"{dense[1]:,}",
                      f"{dense[0] / dense[1]:.2f}", style="bold")  # fmt: skip
    return table


if __name__ == "__main__":
    main()
