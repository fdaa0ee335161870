"""Datasets in ``.npz`` files: inputs keyed by the model's input names, optional ``label``.

edgec runs a model on its fixed input shapes; a dataset holds *samples*, and :class:`Dataset`
records how they map onto *runs* of the model:

- One sample per run (the usual case). Per input, ``[N, *shape]`` (N samples of the input's
  shape), ``[N, *shape[1:]]`` for a batch-1 input (samples stacked along the batch axis), or one
  sample of exactly ``shape``.
- A declared dynamic batch. When the model declares the leading axis of its inputs symbolic
  (``batch``) and ``--input-shape`` fixes it to ``B > 1``, the samples are the rows along that
  axis: ``[N, *shape[1:]]`` is grouped into ``ceil(N / B)`` runs of ``B`` rows, and the last run
  is completed by repeating samples from the first one on. The outputs of repeated rows are
  dropped before accuracy is counted (:meth:`Dataset.rows`); calibration sees them again, which
  leaves minmax ranges unchanged and weights the histogram methods towards the repeated samples.
  Whole runs, ``[R, *shape]``, are accepted too (``R * B`` samples). The manifest records the
  grouping (``data``: samples, batch, runs, repeated).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape

LABEL_KEY = "label"

# How the arrays of one input hold samples (see ``sample_layout``).
Layout = Literal["sample", "samples", "stacked"]


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise EdgecError(f"data file '{path}' does not exist")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array, not an archive of named arrays (np.savez)")
        with data:
            arrays = {key: data[key] for key in data.files}
    # NotImplementedError: a zip member in a compression method zipfile cannot read.
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise EdgecError(f"'{path}' is not a readable .npz file ({exc})") from None
    # np.load hands back a member that is not in .npy format as its raw bytes.
    raw = sorted(key for key, value in arrays.items() if not isinstance(value, np.ndarray))
    if raw:
        raise EdgecError(f"'{path}' is not a readable .npz file (members {raw} are not .npy arrays)")
    return arrays


@dataclass(frozen=True)
class Dataset:
    """Samples as runs of the model.

    Attributes:
        runs: per model input, the runs stacked on a leading axis (``[R, *input shape]``).
        samples: how many samples the runs hold (``N``).
        batch: samples per run: 1, or the fixed size ``B`` of the declared dynamic batch axis.
        labels: one label per sample, when the data is labelled.
    """

    runs: dict[str, np.ndarray]
    samples: int
    batch: int = 1
    labels: np.ndarray | None = None

    @property
    def run_count(self) -> int:
        return len(next(iter(self.runs.values())))

    @property
    def repeated(self) -> int:
        """Rows that repeat a sample to complete the last run of a declared batch."""
        return self.run_count * self.batch - self.samples if self.batch > 1 else 0

    def rows(self, outputs: np.ndarray, name: str = "the output") -> np.ndarray:
        """One row per sample of ``outputs`` (a leading run axis), repeated samples dropped.

        Raises:
            EdgecError: with a declared batch, when ``outputs`` is not ``[R, B, ...]``.
        """
        if self.batch == 1:
            return outputs
        if outputs.ndim < 2 or outputs.shape[1] != self.batch:
            raise EdgecError(
                f"{name} is {list(outputs.shape[1:])} per run; with samples grouped into batches of "
                f"{self.batch}, its leading axis must be that batch"
            )
        return outputs.reshape(-1, *outputs.shape[2:])[: self.samples]

    def head(self, count: int) -> Dataset:
        """The first ``count`` samples (all of them if there are fewer)."""
        count = min(count, self.samples)
        labels = None if self.labels is None else self.labels[:count]
        if self.batch == 1:
            return Dataset({k: v[:count] for k, v in self.runs.items()}, count, 1, labels)
        runs = {k: group_rows(self.rows(v)[:count], self.batch) for k, v in self.runs.items()}
        return Dataset(runs, count, self.batch, labels)

    def arrays(self) -> dict[str, np.ndarray]:
        """The named-array form (the runs by input name, the labels under ``label``), which the
        training engine reads: one sample per run.

        Raises:
            EdgecError: for samples grouped into runs of a declared batch.
        """
        if self.batch > 1:
            raise EdgecError(
                f"training reads one sample per run, but these samples fill runs of the declared batch "
                f"{self.batch}; fix the batch to 1 with --input-shape"
            )
        return {**self.runs, **({} if self.labels is None else {LABEL_KEY: self.labels})}

    def describe(self) -> dict[str, int]:
        """For the manifest: samples, samples per run, runs, repeated rows."""
        counts = (self.samples, self.batch, self.run_count, self.repeated)
        return dict(zip(("samples", "batch", "runs", "repeated"), counts, strict=True))


def group_rows(rows: np.ndarray, batch: int) -> np.ndarray:
    """``[N, ...]`` rows as ``[ceil(N / batch), batch, ...]`` runs; the last run is completed by
    repeating rows from the first one on."""
    runs = -(-len(rows) // batch)
    return rows[np.arange(runs * batch) % len(rows)].reshape(runs, batch, *rows.shape[1:])


def declared_batch(declared: Mapping[str, Any], graph: EdgeGraph) -> int | None:
    """The fixed size of a declared dynamic batch: every input of ``graph`` was declared (shapes
    in ``declared``, before ``--input-shape``) with a symbolic leading axis, now fixed to the same
    size. ``None`` when the inputs declare no such axis."""
    sizes = set()
    for tensor in graph.inputs:
        shape = declared.get(tensor.name)
        fixed = static_shape(tensor)
        if not shape or not fixed or isinstance(shape[0], int):
            return None
        sizes.add(fixed[0])
    return sizes.pop() if len(sizes) == 1 else None


def sample_layout(array: np.ndarray, shape: tuple[int, ...]) -> Layout | None:
    """How ``array`` holds samples of an input of ``shape`` (one sample per run), if it does:
    ``sample`` (exactly the shape), ``samples`` (``[N, *shape]``) or ``stacked`` (``[N, *shape[1:]]``
    for a batch-1 input)."""
    if array.shape == shape:
        return "sample"
    if array.shape[1:] == shape:
        return "samples"
    if shape and shape[0] == 1 and array.ndim == len(shape) and array.shape[1:] == shape[1:]:
        return "stacked"
    return None


def as_runs(array: np.ndarray, layout: Layout) -> np.ndarray:
    """The runs of ``array`` (``[N, *shape]``) for the layout :func:`sample_layout` found."""
    if layout == "sample":
        return array[None]
    return array[:, None] if layout == "stacked" else array


def _runs_of(array: np.ndarray, shape: tuple[int, ...], batch: int | None) -> tuple[np.ndarray, int] | None:
    """``(runs, samples)`` of one input's array, or ``None`` when it fits no layout."""
    if batch is not None and batch > 1:
        if array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            return array, len(array) * batch  # whole runs
        if array.ndim == len(shape) and array.shape[1:] == shape[1:] and len(array):
            return group_rows(array, batch), len(array)
        return None
    layout = sample_layout(array, shape)
    if layout is None:
        return None
    runs = as_runs(array, layout)
    return runs, len(runs)


def dataset_from_arrays(
    arrays: Mapping[str, np.ndarray],
    graph: EdgeGraph,
    *,
    where: str,
    labelled: bool = False,
    batch: int | None = None,
    extra_allowed: bool = True,
) -> Dataset:
    """Checks named arrays against the graph's inputs and groups their samples into runs.

    Args:
        arrays: per input name, its samples (see the module docstring for the layouts).
        graph: the model (fixed input shapes).
        where: what the arrays are, for messages (``'calib.npz'``, ``calibration data``).
        labelled: require ``label`` (one per sample; kept when present anyway).
        batch: the declared dynamic batch size (:func:`declared_batch`), if any.
        extra_allowed: ignore names that are neither inputs nor ``label``.

    Raises:
        EdgecError: missing or unexpected names, shapes that fit no layout, wrong dtype, NaN/Inf,
            differing sample counts, no samples.
    """
    expected = {}
    for tensor in graph.inputs:
        shape = static_shape(tensor)
        if shape is None:
            raise EdgecError(f"input '{tensor.name}' has no static shape; fix it with --input-shape")
        expected[tensor.name] = (shape, np.dtype(tensor.dtype))
    missing = sorted(set(expected) - set(arrays))
    unknown = [] if extra_allowed else sorted(set(arrays) - set(expected) - {LABEL_KEY})
    if missing or unknown:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {unknown}"] if unknown else []
        raise EdgecError(f"{where}: {' and '.join(parts)}; the model's inputs are {sorted(expected)}")
    runs, counts = {}, set()
    for name, (shape, dtype) in expected.items():
        array = np.asarray(arrays[name])
        found = _runs_of(array, shape, batch)
        if found is None:
            rows = f"N rows of {list(shape[1:])} (batch {batch}) or " if batch and batch > 1 else ""
            raise EdgecError(
                f"{where}: input '{name}' has shape {list(array.shape)}; expected {rows}N samples of "
                f"{list(shape)}, i.e. [N, {', '.join(map(str, shape))}]"
            )
        if array.dtype != dtype:
            raise EdgecError(f"{where}: input '{name}' has dtype {array.dtype}, the model expects {dtype}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise EdgecError(f"{where}: input '{name}' contains NaN or Inf")
        runs[name], samples = found
        counts.add(samples)
    if labelled and LABEL_KEY not in arrays:
        raise EdgecError(f"{where} has no '{LABEL_KEY}' array; accuracy needs labels")
    labels = np.asarray(arrays[LABEL_KEY]) if LABEL_KEY in arrays else None
    if labels is not None:
        counts.add(len(labels))
    if len(counts) > 1:
        raise EdgecError(f"{where}: arrays hold different sample counts {sorted(counts)}")
    if counts == {0}:
        raise EdgecError(f"{where} holds no samples")
    return Dataset(runs, counts.pop(), batch if batch and batch > 1 else 1, labels)


def as_dataset(
    data: Dataset | Mapping[str, np.ndarray], graph: EdgeGraph, *, where: str, labelled: bool = False
) -> Dataset:
    """``data`` as a :class:`Dataset`: one built by edgec as is, named arrays (a Python caller's
    ``PassContext(calibration={...})``) checked with one sample per run."""
    if isinstance(data, Dataset):
        return data
    return dataset_from_arrays(data, graph, where=where, labelled=labelled)


def as_arrays(data: Dataset | Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """``data`` in the named-array form (see :meth:`Dataset.arrays`); named arrays as they are."""
    if isinstance(data, Dataset):
        return data.arrays()
    return None if data is None else dict(data)


def load_inputs(path: str | Path, graph: EdgeGraph) -> dict[str, np.ndarray]:
    """One set of inputs, each exactly the input's shape and dtype."""
    path = Path(path)
    arrays = read_npz(path)
    for tensor in graph.inputs:
        array, shape = arrays.get(tensor.name), static_shape(tensor)
        if array is not None and shape is not None and array.shape != shape:
            raise EdgecError(
                f"'{path}': input '{tensor.name}' has shape {list(array.shape)}, "
                f"the model expects {list(shape)}"
            )
    dataset = dataset_from_arrays(arrays, graph, where=f"'{path}'", extra_allowed=False)
    return {name: runs[0] for name, runs in dataset.runs.items()}


def load_dataset(
    path: str | Path, graph: EdgeGraph, *, labelled: bool = False, batch: int | None = None
) -> Dataset:
    """Many samples; ``label`` required if ``labelled`` (kept if present); ``batch``: see
    :func:`declared_batch`."""
    path = Path(path)
    return dataset_from_arrays(
        read_npz(path), graph, where=f"'{path}'", labelled=labelled, batch=batch, extra_allowed=False
    )
