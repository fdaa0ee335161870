"""Reference execution with onnxruntime and the error metrics edgec reports.

Every numeric claim edgec makes (a lossless pass, a compiled artifact, a quantized model) is
measured here against onnxruntime running the original model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape


def _ort_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "Fail",
        "InvalidArgument",
        "InvalidGraph",
        "NoSuchFile",
        "NotImplemented",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "EPFail",
    )
    return (RuntimeError, ValueError, *(getattr(state, n) for n in names if hasattr(state, n)))


def onnx_session(model: onnx.ModelProto):
    """An onnxruntime session that computes ``model`` as written (basic optimizations, 2 threads)."""
    return _session(model)


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Basic optimizations only: the reference should compute the graph as written, not a fused
    # variant of it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = 2
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except _ort_errors() as exc:
        raise EdgecError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``model`` once with onnxruntime; returns outputs by name."""
    session = _session(model)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except _ort_errors() as exc:
        raise EdgecError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0]}") from None
    return dict(zip(names, values, strict=True))


def run_onnx_batch(model: onnx.ModelProto, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs one sample at a time over arrays with a leading sample axis; stacks the outputs."""
    return run_session_batch(_session(model), samples)


def run_session_batch(session: Any, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`run_onnx_batch` on a session from :func:`onnx_session` (reused across calls)."""
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(samples.values())))
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index in range(count):
        # np.asarray: indexing a sample of a scalar input gives a numpy scalar, not a 0-d array.
        values = session.run(names, {k: np.asarray(v[index]) for k, v in samples.items()})
        for name, value in zip(names, values, strict=True):
            outputs[name].append(value)
    return {name: np.stack(values) for name, values in outputs.items()}


def random_inputs(graph: EdgeGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: standard normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in graph.inputs:
        shape = static_shape(tensor)
        if shape is None:
            raise EdgecError(f"input '{tensor.name}' has no static shape; fix it with --input-shape")
        dtype = np.dtype(tensor.dtype)
        if dtype.kind == "f":
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[tensor.name] = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            feeds[tensor.name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            raise EdgecError(f"input '{tensor.name}' has dtype {dtype}, which edgec cannot feed")
    return feeds


@dataclass(frozen=True)
class ErrorMetrics:
    """Error of ``candidate`` against ``reference`` over all outputs."""

    max_abs: float
    mean_abs: float
    cosine: float
    samples: int

    def as_dict(self) -> dict[str, float]:
        return {k: _round(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _round(value: float) -> float:
    # Keeps manifests byte-stable across runs that differ only in the last float bits.
    return float(f"{value:.6g}")


def error_metrics(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], samples: int = 1
) -> ErrorMetrics:
    """Max/mean absolute error and cosine similarity, over all outputs flattened together."""
    ref = np.concatenate([reference[k].astype(np.float64).ravel() for k in sorted(reference)])
    got = np.concatenate([candidate[k].astype(np.float64).ravel() for k in sorted(reference)])
    diff = np.abs(ref - got)
    norms = np.linalg.norm(ref) * np.linalg.norm(got)
    cosine = float(np.dot(ref, got) / norms) if norms > 0 else float(np.array_equal(ref, got))
    return ErrorMetrics(
        max_abs=float(diff.max(initial=0.0)),
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine,
        samples=samples,
    )


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits with a leading sample axis (extra unit axes are squeezed)."""
    predictions = logits.reshape(len(labels), -1).argmax(axis=1)
    return float(np.mean(predictions == labels))
