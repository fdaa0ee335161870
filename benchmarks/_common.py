"""Shared by the benchmark scripts: build a light model with random weights, time onnxruntime."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from edgec.zoo import light_model


def save_light_model(name: str, folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    onnx.save_model(light_model(name, logits=True), str(path))
    return path


def save_with_inputs(model: onnx.ModelProto, name: str, folder: Path) -> tuple[Path, dict, Path]:
    """Saves ``model`` and seeded random inputs for it in ``folder``: (model path, inputs, .npz)."""
    from edgec.ir import EdgeGraph
    from edgec.verify import random_inputs

    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    feeds = random_inputs(EdgeGraph.from_onnx(model), seed=0)
    inputs = folder / f"{name}-x.npz"
    np.savez(inputs, **feeds)
    return path, feeds, inputs


def onnxruntime_latency(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], repeat: int, threads: int = 2
) -> float:
    """Median seconds per run, onnxruntime with all graph optimizations and ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_minimum(timers: dict, rounds: int) -> dict:
    """Milliseconds per run of each timer, the minimum over ``rounds`` interleaved rounds: a shared
    machine's load drifts, and round-robin rounds expose every variant to the same drift."""
    best = {key: float("inf") for key in timers}
    for _ in range(rounds):
        for key, timer in timers.items():
            best[key] = min(best[key], 1e3 * min(timer()))
    return best


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="edgec-bench-")
