"""Calibration: activation ranges from data, by minmax, percentile, entropy (KL) or MSE.

The float model runs in onnxruntime with every tensor of interest added as a graph output, one
sample at a time. ``minmax`` needs one pass; the histogram methods build a 2048-bin histogram per
tensor over the minmax range (a second pass unless the first pass's outputs fit in memory) and
choose a clipping range from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from edgec.data import Dataset, as_dataset
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape
from edgec.verify import onnx_session

CalibrationMethod = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")

HISTOGRAM_BINS = 2048
# Outputs of the first pass are kept for the histogram pass when they fit in this many bytes;
# beyond it the model runs twice instead.
CACHE_BYTES = 256 << 20
# Samples per onnxruntime session: bounds the memory of stacked instrumented outputs.
CHUNK_BYTES = 64 << 20

Range = tuple[float, float]


def check_calibration(
    samples: Dataset | Mapping[str, np.ndarray] | None, graph: EdgeGraph, warn: Callable[[str], None]
) -> dict[str, np.ndarray]:
    """Validates calibration data against the graph's inputs; returns the model runs per input
    (a leading run axis, see :mod:`edgec.data`).

    Raises:
        EdgecError: no data, missing names, wrong shape or dtype, NaN/Inf, no samples.
    """
    if samples is None:
        raise EdgecError("static quantization needs calibration data: pass --calib data.npz")
    dataset = as_dataset(samples, graph, where="calibration data")
    if dataset.samples == 1:
        warn("calibration uses a single sample; ranges will not represent real data (give 100+ samples)")
    return dataset.runs


def _instrumented(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (float tensors)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def iterate_outputs(
    model: onnx.ModelProto,
    names: list[str],
    samples: dict[str, np.ndarray],
    bytes_per_sample: int,
    advance: Callable[[int], None] = lambda done: None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the tensors ``names`` for chunks of samples (stacked along a leading sample axis);
    ``advance`` is told how many samples each chunk ran (a progress bar)."""
    # One session for every chunk: building one serializes the model and plans its kernels, which
    # cost more than running resnet50 on a sample (8.5 of 37 s of its quantization).
    session = onnx_session(
        _instrumented(model, names), "the float model with its tensors as outputs (calibration)"
    )
    count = len(next(iter(samples.values())))
    chunk = max(1, min(count, CHUNK_BYTES // max(bytes_per_sample, 1)))
    for start in range(0, count, chunk):
        part = {k: v[start : start + chunk] for k, v in samples.items()}
        outputs = session.run_batch(part)
        advance(len(next(iter(part.values()))))
        yield {name: outputs[name] for name in names}


@dataclass
class _Statistics:
    lo: float = np.inf
    hi: float = -np.inf
    histogram: np.ndarray | None = None

    def update_range(self, values: np.ndarray) -> None:
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))

    def update_histogram(self, values: np.ndarray) -> None:
        lo, hi = self.histogram_range
        counts, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(lo, hi))
        self.histogram = counts if self.histogram is None else self.histogram + counts

    @property
    def histogram_range(self) -> Range:
        # Always include 0 and never an empty interval (np.histogram needs lo < hi).
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        return (lo, hi) if hi > lo else (lo, lo + 1.0)


def collect_ranges(
    graph: EdgeGraph,
    names: list[str],
    samples: dict[str, np.ndarray],
    method: str = "minmax",
    percentile: float = 99.99,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Range]:
    """The calibrated range ``(lo, hi)`` of each tensor in ``names`` (see ``choose_range``).

    ``progress`` is ``PassContext.progress``: a bar over the calibration samples.
    """
    if method not in METHODS:
        raise EdgecError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    if not names:
        return {}
    model = graph.to_onnx()
    tensors = graph.tensors()
    bytes_per_sample = sum(int(np.prod(static_shape(tensors[n]) or (1,))) * 4 for n in names)
    stats = {name: _Statistics() for name in names}
    count = len(next(iter(samples.values())))
    cache: list[dict[str, np.ndarray]] | None = (
        [] if method != "minmax" and bytes_per_sample * count <= CACHE_BYTES else None
    )
    advance = progress(f"calibrating {len(names)} tensors", count) if progress else (lambda done: None)
    for outputs in iterate_outputs(model, names, samples, bytes_per_sample, advance):
        for name, values in outputs.items():
            if not np.all(np.isfinite(values)):
                raise EdgecError(
                    f"tensor '{name}' is NaN or Inf on the calibration data; the float model overflows "
                    "or the data is out of its domain"
                )
            stats[name].update_range(values)
        if cache is not None:
            cache.append(outputs)
    if method != "minmax":
        chunks = cache if cache is not None else iterate_outputs(model, names, samples, bytes_per_sample)
        for outputs in chunks:
            for name, values in outputs.items():
                stats[name].update_histogram(values)
    return {name: choose_range(stats[name], method, percentile) for name in names}


def choose_range(stats: _Statistics, method: str, percentile: float = 99.99) -> Range:
    """The clipping range of one tensor.

    - ``minmax``: ``[min x, max x]``.
    - ``percentile``: the ``(100 - p)``-th and ``p``-th percentiles (the lower one is 0 for
      tensors that are never negative).
    - ``entropy``: the threshold ``T`` minimising ``KL(P || Q)`` between the histogram ``P`` of
      ``|x|`` clipped at ``T`` and its quantization ``Q`` to 128 levels (255 for non-negative
      tensors), as in TensorRT's calibrator; range ``[max(lo, -T), min(hi, T)]``.
    - ``mse``: the range ``a * [lo, hi]`` (``a`` in ``[0.05, 1]``) minimising the expected squared
      error ``sum_b n_b (c_b - Q(c_b))^2`` over histogram bins (centre ``c_b``, count ``n_b``).
    """
    lo, hi = stats.lo, stats.hi
    if method == "minmax" or stats.histogram is None or hi <= lo:
        return lo, hi
    edges = np.linspace(*stats.histogram_range, HISTOGRAM_BINS + 1)
    counts = stats.histogram.astype(np.float64)
    if method == "percentile":
        return _percentile_range(counts, edges, lo, percentile)
    if method == "entropy":
        threshold = _entropy_threshold(counts, edges, nonnegative=lo >= 0.0)
        return max(lo, -threshold), min(hi, threshold)
    return _mse_range(counts, edges, lo, hi)


def _percentile_range(counts: np.ndarray, edges: np.ndarray, lo: float, percentile: float) -> Range:
    if not 50.0 < percentile <= 100.0:
        raise EdgecError(f"percentile must be in (50, 100], got {percentile}")
    cumulative = np.cumsum(counts) / counts.sum()
    upper = edges[min(np.searchsorted(cumulative, percentile / 100.0) + 1, len(edges) - 1)]
    if lo >= 0.0:
        return 0.0, float(upper)
    lower = edges[np.searchsorted(cumulative, 1.0 - percentile / 100.0)]
    return float(lower), float(upper)


def _entropy_threshold(counts: np.ndarray, edges: np.ndarray, nonnegative: bool) -> float:
    """TensorRT's KL-divergence threshold on the histogram of ``|x|``."""
    # Fold the signed histogram into one of |x| with bins of the same width, starting at 0.
    width = edges[1] - edges[0]
    centres = (edges[:-1] + edges[1:]) / 2
    absolute_bins = int(np.ceil(np.abs(centres).max() / width)) + 1
    folded = np.zeros(absolute_bins)
    np.add.at(folded, np.minimum((np.abs(centres) / width).astype(int), absolute_bins - 1), counts)
    # The bin at 0 holds every value a Relu zeroed; left in, it dominates both distributions and
    # the divergence ignores the tail, clipping far too tightly (pytorch-quantization does the same).
    folded[0] = folded[1]
    levels = 255 if nonnegative else 128
    if absolute_bins <= levels:
        return float(absolute_bins * width)
    best_threshold, best_divergence = float(absolute_bins * width), np.inf
    # A stride keeps the search cheap (about 250 candidates) at a resolution of 8 bins in 2048.
    for stop in range(levels, absolute_bins + 1, max(1, (absolute_bins - levels) // 256)):
        reference = folded[:stop].copy()
        reference[-1] += folded[stop:].sum()  # outliers saturate into the last bin
        nonzero = reference > 0
        # Merge ``stop`` bins into ``levels`` quantization bins, then spread each merged count
        # uniformly back over the bins that were non-zero in the reference.
        index = (np.arange(stop) * levels) // stop
        merged = np.bincount(index, weights=folded[:stop], minlength=levels)
        support = np.bincount(index, weights=nonzero.astype(float), minlength=levels)
        expanded = np.where(nonzero, merged[index] / np.maximum(support[index], 1.0), 0.0)
        p = reference / reference.sum()
        q_total = expanded.sum()
        if q_total <= 0:
            continue
        q = expanded / q_total
        mask = p > 0
        # Bins with p > 0 and q == 0 make KL infinite; a small floor keeps the comparison finite.
        divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if divergence < best_divergence:
            best_divergence, best_threshold = divergence, float(stop * width)
    return best_threshold


def _mse_range(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float) -> Range:
    centres = (edges[:-1] + edges[1:]) / 2
    best, best_error = (lo, hi), np.inf
    for ratio in np.linspace(0.05, 1.0, 96):
        low, high = min(lo * ratio, 0.0), max(hi * ratio, 0.0)
        scale = (high - low) / 255.0
        if scale <= 0:
            continue
        zero_point = np.round(-128 - low / scale)
        q = np.clip(np.round(centres / scale) + zero_point, -128, 127)
        error = float(np.sum(counts * (centres - scale * (q - zero_point)) ** 2))
        if error < best_error:
            best, best_error = (low, high), error
    return best
