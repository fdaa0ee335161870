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


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="edgec-bench-")
