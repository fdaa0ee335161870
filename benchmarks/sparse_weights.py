"""Sparse weights, measured: what the artifact stores, what the kernels cost, on x86 and Cortex-M4.

python benchmarks/sparse_weights.py [--points 0.5 0.75 0.8 2:4] [--models squeezenet mobilenet_style]
                                    [--repeat 20] [--inferences 2] [--no-mcu] [--json]

(``benchmarks/pruning.py`` prints the same tables after its own.) Tables, from one run:

1. digits CNN, int8 (``--prune S`` or ``--prune-nm 2:4``, then ``--quantize int8``), each point
   built twice per target: with the sparse formats the target declares and with
   ``--no-sparse-weights`` (every weight dense): the weight tensors' bytes (dense float32, dense
   int8, stored), top-1 accuracy on the 450 test images (x86 artifact; before any recovery: the
   training issue's distillation brings it back), the Cortex-M4 image's ``.weights`` section and
   flash (linked firmware, minus an empty one), its executed instructions per inference under
   qemu (``mcu_cycles.py``'s plugin), and the largest difference of the Cortex-M4 outputs from the
   x86 build and from the numpy reference of the integer kernels on 4 test images (0: bit-exact).
2. x86 latency of sparse against dense builds of the same pruned model (float32 and int8, one
   thread each; minimum over interleaved rounds): the digits CNN and larger models, so the table
   says where walking the non-zeros pays and where the dense kernels (register-tiled, with
   ``vpmaddwd`` for int8) stay faster.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _common import interleaved_minimum, save_with_inputs, scratch
from mcu_cycles import DIGITS, build_plugin, count_inferences
from rich.console import Console
from rich.table import Table

import edgec
from edgec.ir import EdgeGraph
from edgec.run import run_build
from edgec.targets import get_target

CALIB = DIGITS / "digits_calib.npz"
TEST = DIGITS / "digits_test.npz"
# Test images on which the Cortex-M4 outputs are compared with x86's and the reference's.
SAMPLES = 4


def _options(point: str) -> dict[str, Any]:
    return {"prune_nm": point} if ":" in point else {"prune": float(point)} if float(point) else {}


def _sparse_stats(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(r["stats"] for r in manifest["legalization"] if r["name"] == "sparse-weights")


def _times(build: Path, inputs: Path) -> list[float]:
    return run_build(build, inputs, 5)[1]


def digits_rows(points: list[str], folder: Path, repeat: int, mcu: bool, inferences: int) -> list[dict]:
    """Table 1 (and the digits rows of table 2)."""
    from edgec.targets.integer.reference import run_reference

    data = np.load(TEST)
    samples = data["input"][:SAMPLES]
    inputs = folder / "digits-x.npz"
    np.savez(inputs, input=samples[:1])
    target = get_target("cortex-m4")
    plugin = build_plugin(folder) if mcu else None
    rows = []
    for point in points:
        row: dict[str, Any] = {"point": point}
        builds = {}
        for sparse in (True, False):
            build = folder / f"digits-{point}-{'sparse' if sparse else 'dense'}"
            options = dict(quantize="int8", calib=CALIB, sparse_weights=sparse, **_options(point))
            result = edgec.compile(DIGITS / "digits_cnn.onnx", build, target="x86", eval=TEST, **options)
            builds[sparse] = build
            stats = _sparse_stats(result.manifest)
            key = "sparse" if sparse else "dense"
            row[key] = {
                "stored_bytes": stats["stored_bytes"],
                "accuracy": result.manifest["error"]["accuracy"],
            }
            row["dense_int8_bytes"] = stats["dense_bytes"]
            row["original_accuracy"] = result.manifest["error"]["accuracy"]["original"]
            if sparse:
                row["formats"] = sorted({w["format"] for w in stats["weights"]})
                row["sparsity"] = round(
                    sum(w["sparsity"] * w["dense_bytes"] for w in stats["weights"]) / stats["dense_bytes"], 4
                )
            if mcu:
                row[key].update(_mcu(target, point, sparse, options, folder, samples, plugin, inferences))
        row["dense_fp32_bytes"] = 4 * row["dense_int8_bytes"]
        x86 = _outputs(builds[True], folder, samples)
        legal = _legal_graph(point)
        reference = np.concatenate([run_reference(legal, {"input": s[None]})["logits"] for s in samples])
        row["x86_vs_reference"] = float(np.abs(x86 - reference).max())
        if mcu:
            m4 = np.asarray(row["sparse"].pop("outputs"))
            row["mcu_vs_x86"] = float(np.abs(m4 - x86).max())
            row["dense"].pop("outputs")
        ms = interleaved_minimum(
            {s: partial(_times, b, inputs) for s, b in builds.items()}, max(1, repeat // 5)
        )
        row["x86_ms"] = {"sparse": ms[True], "dense": ms[False]}
        rows.append(row)
    return rows


def _outputs(build: Path, folder: Path, samples: np.ndarray) -> np.ndarray:
    """The artifact's logits on each sample (the model takes one image at a time)."""
    logits = []
    for index, sample in enumerate(samples):
        path = folder / f"digits-sample{index}.npz"
        np.savez(path, input=sample[None])
        logits.append(run_build(build, path)[0]["logits"])
    return np.concatenate(logits)


def _legal_graph(point: str) -> EdgeGraph:
    """The x86 legal graph of a digits point (what the numpy reference runs)."""
    from edgec.compile import legalize, prepare, target_of
    from edgec.config import CompileOptions
    from edgec.progress import Progress

    options = CompileOptions(quantize="int8", calib=CALIB, **_options(point))
    prepared = prepare(DIGITS / "digits_cnn.onnx", options, Progress(quiet=True))
    return legalize(prepared, target_of(options), Progress(quiet=True)).graph


def _mcu(target, point, sparse, options, folder, samples, plugin, inferences) -> dict[str, Any]:
    """Cortex-M4: image sizes, instructions per inference, outputs on ``samples``."""
    build = folder / f"m4-{point}-{'sparse' if sparse else 'dense'}"
    result = edgec.compile(DIGITS / "digits_cnn.onnx", build, target="cortex-m4", name="model", **options)
    sizes = result.manifest["sizes"]
    outputs = _outputs(build, folder, samples)
    work = folder / f"{build.name}-run"
    work.mkdir()
    _, runs = count_inferences(target, build, "model", [samples[:1]], 1, plugin, work, inferences)
    return {
        "weights_section": result.manifest["artifact"]["image_sections"][".weights"],
        "flash_bytes": sizes["flash_bytes"],
        "code_bytes": sizes["code_bytes"],
        "arena_bytes": sizes["arena_bytes"],
        "instructions": (runs[inferences] - runs[0]) / inferences,
        "outputs": outputs.tolist(),
    }


def latency_rows(models: list[str], sparsity: float, folder: Path, repeat: int) -> list[dict]:
    """Table 2 for larger models: float32 and int8 at ``sparsity`` (``--prune``), sparse vs dense."""
    from pruning import x86_model  # the benchmark's model set (light models, mobilenet_style ...)

    rows = []
    for name in models:
        path, feeds, inputs = save_with_inputs(x86_model(name), name, folder)
        calib = folder / f"{name}-calib.npz"
        rng = np.random.default_rng(1)
        np.savez(calib, **{k: rng.standard_normal((8, *v.shape)).astype(v.dtype) for k, v in feeds.items()})
        for precision in ("float32", "int8"):
            builds, stats = {}, None
            for sparse in (True, False):
                build = folder / f"{name}-{precision}-{'sparse' if sparse else 'dense'}"
                quantize = {"quantize": "int8", "calib": calib} if precision == "int8" else {}
                result = edgec.compile(
                    path, build, target="x86", prune=sparsity, sparse_weights=sparse, **quantize
                )
                builds[sparse] = build
                stats = _sparse_stats(result.manifest) if sparse else stats
            ms = interleaved_minimum(
                {s: partial(_times, b, inputs) for s, b in builds.items()}, max(1, repeat // 5)
            )
            assert stats is not None
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "sparsity": sparsity,
                    "sparse_weights": stats["sparse"],
                    "bytes": [stats["dense_bytes"], stats["stored_bytes"]],
                    "x86_ms": {"sparse": ms[True], "dense": ms[False]},
                }
            )
    return rows


def print_tables(report: dict[str, Any]) -> None:
    console = Console(width=220)
    rows = report.get("digits", [])
    if rows:
        title = "digits CNN, int8: weights stored sparse vs dense; accuracy before recovery (450 test images)"
        table = Table("point", "zeros", "formats", "accuracy", "weights fp32 / int8 / sparse B", "vs fp32",
                      "vs int8", "x86 = reference", box=None, title=title)  # fmt: skip
        for r in rows:
            stored = r["sparse"]["stored_bytes"]
            accuracy = r["sparse"]["accuracy"]["artifact"]
            table.add_row(
                r["point"], f"{r['sparsity']:.0%}", ",".join(r["formats"]),
                f"{r['original_accuracy']:.3f} → {accuracy:.3f}",
                f"{r['dense_fp32_bytes']:,} / {r['dense_int8_bytes']:,} / {stored:,}",
                f"{r['dense_fp32_bytes'] / stored:.1f}x smaller",
                f"{1 - stored / r['dense_int8_bytes']:.0%} less",
                "yes" if r["x86_vs_reference"] == 0 else f"max |d| {r['x86_vs_reference']:.3g}",
            )  # fmt: skip
        console.print(table)
        if "weights_section" in rows[0]["sparse"]:
            title = "Cortex-M4 (qemu mps2-an386): linked image, sparse vs dense int8 weights"
            table = Table("point", ".weights B dense → sparse", "less", "flash B dense → sparse", "code B",
                          "arena B", "instr/inference dense → sparse", "ratio", "M4 = x86", box=None,
                          title=title)  # fmt: skip
            for r in rows:
                d, s = r["dense"], r["sparse"]
                table.add_row(
                    r["point"], f"{d['weights_section']:,} → {s['weights_section']:,}",
                    f"{1 - s['weights_section'] / d['weights_section']:.0%}",
                    f"{d['flash_bytes']:,} → {s['flash_bytes']:,}",
                    f"{d['code_bytes']:,} → {s['code_bytes']:,}",
                    f"{d['arena_bytes']:,} → {s['arena_bytes']:,}",
                    f"{d['instructions']:,.0f} → {s['instructions']:,.0f}",
                    f"{s['instructions'] / d['instructions']:.2f}",
                    "yes" if r["mcu_vs_x86"] == 0 else f"max |d| {r['mcu_vs_x86']:.3g}",
                )  # fmt: skip
            console.print(table)
    latency = [
        {"model": "digits", "precision": "int8", "point": r["point"], "x86_ms": r["x86_ms"]} for r in rows
    ] + report.get("latency", [])
    if latency:
        threads = os.environ.get("TVM_NUM_THREADS", "default")
        title = (
            f"x86 latency (TVM_NUM_THREADS={threads}), sparse vs dense build of the same pruned model (ms)"
        )
        table = Table(
            "model", "precision", "zeros", "dense ms", "sparse ms", "sparse/dense", box=None, title=title
        )
        for r in latency:
            ms = r["x86_ms"]
            point = r.get("point") or f"{r['sparsity']:.0%}"
            table.add_row(r["model"], r["precision"], point, f"{ms['dense']:.3f}", f"{ms['sparse']:.3f}",
                          f"{ms['sparse'] / ms['dense']:.2f}")  # fmt: skip
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=["0", "0.5", "0.75", "0.8", "2:4"])
    parser.add_argument("--models", nargs="+", default=["squeezenet", "mobilenet_style"])
    parser.add_argument("--sparsity", type=float, default=0.8, help="unstructured sparsity of --models")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--inferences", type=int, default=2, help="timed inferences counted under qemu")
    parser.add_argument("--no-mcu", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The report of both tables (one thread on x86: the machine may be shared)."""
    os.environ["TVM_NUM_THREADS"] = "1"
    with scratch() as name:
        folder = Path(name)
        return {
            "digits": digits_rows(args.points, folder, args.repeat, not args.no_mcu, args.inferences),
            "latency": latency_rows(args.models, args.sparsity, folder, args.repeat),
        }


if __name__ == "__main__":
    main()
