"""x86 latency: onnxruntime fp32 vs edgec untuned vs edgec tuned, threads stated on both sides.

python benchmarks/latency.py [--models squeezenet mobilenet ...] [--repeat 30] [--trials 64]
    [--db DIR] [--threads N] [--int8]

Models: the light squeezenet/resnet50/inception_v1/shufflenet from the onnx wheel (``edgec.zoo``), the
representative families of ``edgec.families`` (mobilenet, recognizer, yolo) and the digits
CNN of ``examples/digits``; all with seeded random weights except digits (trained). Both sides
run with the same thread count (``--threads``, default the physical cores); latencies are the
median of ``--repeat`` runs, onnxruntime and edgec timed alternately in rounds in the same
process so that a busy machine slows both alike. ``--trials 0`` skips tuning; with tuning, the
model is compiled a second time from the database alone (``--db``, no tuning: its compile
seconds and latency are the ``rebuild`` column). ``--int8``
quantizes every model first with edgec's ``quantize`` pass (int8 QDQ, calibrated on 8 seeded
random inputs; digits on its own calibration images) and times that QDQ model on both sides,
with edgec's untuned fp32 build of the same model timed in the same rounds (``int8/fp32``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

import edgec
from edgec.families import FAMILIES, family_model
from edgec.ir import EdgeGraph
from edgec.run import run_build
from edgec.targets.tvm.threads import physical_cores
from edgec.verify import random_inputs
from edgec.zoo import light_model

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits" / "digits_cnn.onnx"
LIGHT = ("squeezenet", "resnet50", "inception_v1", "shufflenet")
MODELS = (*LIGHT, *FAMILIES, "digits")
ROUNDS = 3


def _model(name: str) -> onnx.ModelProto:
    if name in LIGHT:
        return light_model(name, logits=True)
    if name == "digits":
        return onnx.load(str(DIGITS))
    return family_model(name)


def _quantized(model: onnx.ModelProto, source: Path, name: str, folder: Path) -> Path:
    """The file of ``model`` (saved at ``source``) as int8 QDQ by edgec's ``quantize`` pass."""
    target = folder / f"{name}-int8.onnx"
    calib = DIGITS.with_name("digits_calib.npz")
    if name != "digits":
        graph = EdgeGraph.from_onnx(model)
        samples = [random_inputs(graph, seed=seed) for seed in range(8)]
        calib = folder / f"{name}-calib.npz"
        np.savez(calib, **{key: np.concatenate([s[key] for s in samples]) for key in samples[0]})
    edgec.optimize(source, target, pipeline="default,quantize", calib=calib)
    return target


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _time(function, repeat: int) -> list[float]:
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--trials", type=int, default=64, help="tuning trials per model (0: no tuning)")
    parser.add_argument("--db", type=Path, help="tuning database (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--int8", action="store_true", help="time the models quantized to int8 QDQ")
    args = parser.parse_args()
    table = Table(
        "model",
        "threads ORT/edgec",
        "ORT ms",
        "untuned ms",
        "untuned/ORT",
        "tuned ms",
        "tuned/ORT",
        "trials (min)",
        "rebuild from db s (ms)",
        "max abs err",
        "int8 micro-kernels",
        *(("fp32 ms", "int8/fp32") if args.int8 else ()),
        box=None,
    )
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as scratch:
        folder = Path(scratch)
        db = args.db or folder / "db"
        for name in args.models:
            original = _model(name)
            float_path = folder / f"{name}-fp32.onnx"
            onnx.save_model(original, str(float_path))
            path = _quantized(original, float_path, name, folder) if args.int8 else float_path
            model = onnx.load(str(path))
            feeds = random_inputs(EdgeGraph.from_onnx(model), seed=0)
            np.savez(folder / "x.npz", **feeds)
            untuned = edgec.compile(path, folder / f"{name}-untuned", threads=args.threads)
            builds = {"untuned": folder / f"{name}-untuned"}
            if args.int8:
                edgec.compile(float_path, folder / f"{name}-fp32", threads=args.threads)
                builds["fp32"] = folder / f"{name}-fp32"
            tuning = None
            if args.trials:
                tuned = edgec.compile(
                    path, folder / f"{name}-tuned", threads=args.threads, tune=args.trials, db=db
                )
                builds["tuned"] = folder / f"{name}-tuned"
                tuning = tuned.manifest["tuning"]
                # A second compile with the database: no tuning, its schedules from the records.
                start = time.perf_counter()
                edgec.compile(path, folder / f"{name}-rebuilt", threads=args.threads, db=db)
                rebuild_seconds = time.perf_counter() - start
                builds["rebuilt"] = folder / f"{name}-rebuilt"
            session = _session(model, args.threads)
            times: dict[str, list[float]] = {"ort": [], **{k: [] for k in builds}}
            for _ in range(ROUNDS):  # alternate, so that load from other processes hits all alike
                times["ort"] += _time(lambda s=session, f=feeds: s.run(None, f), args.repeat // ROUNDS)
                for key, build in builds.items():
                    times[key] += run_build(build, folder / "x.npz", repeat=args.repeat // ROUNDS)[1]
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            row = [name, f"{args.threads}/{untuned.manifest['target']['threads'] or args.threads}"]
            row += [f"{ms['ort']:.2f}", f"{ms['untuned']:.2f}", f"{ms['untuned'] / ms['ort']:.2f}x"]
            if tuning:
                row += [f"{ms['tuned']:.2f}", f"{ms['tuned'] / ms['ort']:.2f}x"]
                row.append(f"{tuning['trials_run']} ({tuning['minutes']:.1f})")
                row.append(f"{rebuild_seconds:.1f} ({ms['rebuilt']:.2f})")
            else:
                row += ["-", "-", "-", "-"]
            row.append(f"{untuned.manifest['error']['artifact_vs_original']['max_abs']:.1e}")
            kernels = untuned.manifest.get("micro_kernels") or {}
            row.append(" ".join(f"{k}x{n}" for k, n in kernels.items()) or "-")
            if args.int8:
                row += [f"{ms['fp32']:.2f}", f"{ms['untuned'] / ms['fp32']:.2f}x"]
            table.add_row(*row)
            Console(width=200).print(f"{name} done", style="dim")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
