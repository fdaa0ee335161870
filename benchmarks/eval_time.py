"""`--eval` time on a target: batched artifact runs (one link and one emulator boot per batch) vs one
run per sample (a link and a boot each, what edgec did before batching), same machine, same run.

python benchmarks/eval_time.py [--target cortex-m4] [--before-edgec OLD_CHECKOUT/.venv/bin/edgec]

The batched row is ``edgec compile examples/digits/digits_cnn.onnx --target T --eval
examples/digits/digits_test.npz`` end to end (wall clock; its verify step from timings.json). The
per-sample row runs the same artifact on the same samples (8 for the error figures, 450 for the
accuracy) with one ``Target.run`` per sample and checks that the outputs equal the batched ones;
its verify step is the batched one with those runs in place of the two batched ones, and its
compile time the batched compile's with that verify step. ``--before-edgec`` also times an
older edgec end to end (e.g. a worktree of a commit before batching, with its own venv).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import scratch
from rich.console import Console
from rich.table import Table

from edgec.evaluate import ERROR_SAMPLES
from edgec.targets import get_target

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


def compile_digits(edgec: list[str], target: str, out: Path) -> tuple[float, float]:
    """Wall seconds of one ``edgec compile --eval`` and the verify step it recorded."""
    command = [*edgec, "compile", str(DIGITS / "digits_cnn.onnx"), "--target", target]
    command += ["--eval", str(DIGITS / "digits_test.npz"), "-o", str(out), "-q", "--json"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "timings.json").read_text())["verify"]


def artifact_runs(target_name: str, build: Path, batched: bool) -> tuple[float, int, list[np.ndarray]]:
    """Seconds of the artifact runs behind the error and accuracy figures, how many runs, outputs."""
    target = get_target(target_name)
    manifest = json.loads((build / "manifest.json").read_text())
    images = np.load(DIGITS / "digits_test.npz")["input"][:, None]
    batches = [images[:ERROR_SAMPLES], images]  # the error figures' samples, then the accuracy's
    if not batched:
        batches = [batch[i : i + 1] for batch in batches for i in range(len(batch))]
    start = time.perf_counter()
    outputs = [target.run(build, manifest, [batch])[0][0] for batch in batches]
    return time.perf_counter() - start, len(batches), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--before-edgec", type=Path, help="an older edgec executable to time end to end")
    args = parser.parse_args()
    edgec = [sys.executable, "-m", "edgec.cli"]
    table = Table("edgec", "artifact runs", "compile --eval (wall s)", "verify step (s)", box=None)
    with scratch() as folder:
        folder = Path(folder)
        if args.before_edgec:
            wall, verify = compile_digits([str(args.before_edgec)], args.target, folder / "before")
            table.add_row(f"{args.before_edgec} (measured)", "one per sample", f"{wall:.1f}", f"{verify:.1f}")
        wall, verify = compile_digits(edgec, args.target, folder / "build")
        batched_seconds, batched_runs, batched = artifact_runs(args.target, folder / "build", batched=True)
        single_seconds, single_runs, single = artifact_runs(args.target, folder / "build", batched=False)
        assert np.array_equal(np.concatenate(batched), np.concatenate(single)), "batched outputs differ"
        before_verify = verify - batched_seconds + single_seconds
        table.add_row(
            "one run per sample (before batching)",
            str(single_runs),
            f"{wall - verify + before_verify:.1f}",
            f"{before_verify:.1f}",
        )
        table.add_row("batched (this checkout)", str(batched_runs), f"{wall:.1f}", f"{verify:.1f}")
    print(
        f"digits CNN, --eval over 450 test images on {args.target} (+{ERROR_SAMPLES} for the error figures)"
    )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
