"""Reference execution with onnxruntime and the error metrics edgec reports.

Every numeric claim edgec makes (a lossless pass, a compiled artifact, a quantized model) is
measured here against onnxruntime running the original model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgec.errors import EdgecError, VerificationError
from edgec.ir import EdgeGraph, static_shape


class Session:
    """An onnxruntime session for one model, held by edgec's ``onnxruntime`` worker process.

    The session computes the model as written (basic graph optimizations, 2 threads). It lives in
    the worker (see :mod:`edgec.isolation`), cached by the model's digest, so that a native crash
    of onnxruntime becomes an error naming ``purpose`` instead of killing edgec.

    Args:
        model: the model, its serialized bytes, or its file (loaded by onnxruntime as it is, with
            its external data).
        purpose: what the model is, for messages (``the original model``).
    """

    def __init__(self, model: onnx.ModelProto | bytes | Path, purpose: str = "a model") -> None:
        if isinstance(model, Path):
            status = model.stat()
            identity = f"{model.resolve()}:{status.st_mtime_ns}:{status.st_size}".encode()
            self.model: bytes | str = str(model)
        else:
            self.model = identity = model if isinstance(model, bytes) else model.SerializeToString()
        self.key = hashlib.blake2b(identity, digest_size=16).hexdigest()
        self.purpose = purpose
        self.output_names = list(self._request(("open", self.key, None), "creating a session for"))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model once; returns outputs by name."""
        return self._request(("run", self.key, feeds, False), "running")

    def run_batch(self, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one sample at a time over arrays with a leading sample axis; stacks the outputs."""
        return self._request(("run", self.key, samples, True), "running")

    def _request(self, message: tuple, verb: str) -> Any:
        from edgec.isolation import worker

        onnxruntime = worker("onnxruntime")
        activity = f"{verb} {self.purpose}"
        reply = onnxruntime.request(message, activity, "onnxruntime")
        if reply is None:
            # The worker does not hold the session (it was restarted or evicted it): send the model.
            onnxruntime.request(("open", self.key, self.model), f"creating a session for {self.purpose}")
            reply = onnxruntime.request(message, activity, "onnxruntime")
        return reply


def onnx_session(model: onnx.ModelProto, purpose: str = "a model") -> Session:
    """A session for ``model``, reused across calls (see :class:`Session`)."""
    return Session(model, purpose)


def run_onnx(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], purpose: str = "a model"
) -> dict[str, np.ndarray]:
    """Runs ``model`` once with onnxruntime; returns outputs by name."""
    return Session(model, purpose).run(feeds)


def run_onnx_batch(
    model: onnx.ModelProto | bytes | Path, samples: dict[str, np.ndarray], purpose: str = "a model"
) -> dict[str, np.ndarray]:
    """Runs one sample at a time over arrays with a leading sample axis; stacks the outputs."""
    return Session(model, purpose).run_batch(samples)


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
    # inf against the same inf, NaN against NaN, agree; the error is measured over finite values
    # (NaN or inf in a manifest is not JSON, and would hide every other difference).
    finite = np.isfinite(ref) & np.isfinite(got)
    agree = (ref == got) | (np.isnan(ref) & np.isnan(got))
    if not np.all(finite | agree):
        raise VerificationError(
            f"{int(np.sum(~finite & ~agree))} of {ref.size} output values are NaN or infinite in one "
            "result and not in the other (candidate vs onnxruntime), so the error cannot be measured"
        )
    ref, got = ref[finite], got[finite]
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
