"""Datasets in ``.npz`` files: inputs keyed by the model's input names, optional ``label``.

Single-sample files hold arrays of exactly the input shape; datasets for calibration and
evaluation hold a leading sample axis (``N`` samples of the input shape).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape

LABEL_KEY = "label"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise EdgecError(f"data file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EdgecError(f"'{path}' is not a readable .npz file ({exc})") from None


def _expected(graph: EdgeGraph) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    expected = {}
    for tensor in graph.inputs:
        shape = static_shape(tensor)
        if shape is None:
            raise EdgecError(f"input '{tensor.name}' has no static shape; fix it with --input-shape")
        expected[tensor.name] = (shape, np.dtype(tensor.dtype))
    return expected


def _check_names(path: Path, arrays: dict, expected: dict, extra: set[str]) -> None:
    missing = sorted(set(expected) - set(arrays))
    unknown = sorted(set(arrays) - set(expected) - extra)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unexpected {unknown}")
        raise EdgecError(f"'{path}': {' and '.join(parts)}; the model's inputs are {sorted(expected)}")


def _check_values(path: Path, name: str, array: np.ndarray, dtype: np.dtype) -> None:
    if array.dtype != dtype:
        raise EdgecError(f"'{path}': input '{name}' has dtype {array.dtype}, the model expects {dtype}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise EdgecError(f"'{path}': input '{name}' contains NaN or Inf")


def load_inputs(path: str | Path, graph: EdgeGraph) -> dict[str, np.ndarray]:
    """One set of inputs, each exactly the input's shape and dtype."""
    path = Path(path)
    arrays = read_npz(path)
    expected = _expected(graph)
    _check_names(path, arrays, expected, extra=set())
    for name, (shape, dtype) in expected.items():
        array = arrays[name]
        if array.shape != shape:
            raise EdgecError(
                f"'{path}': input '{name}' has shape {list(array.shape)}, the model expects {list(shape)}"
            )
        _check_values(path, name, array, dtype)
    return arrays


def load_dataset(path: str | Path, graph: EdgeGraph, *, labelled: bool = False) -> dict[str, np.ndarray]:
    """Many samples: each input with a leading sample axis; ``label`` required if ``labelled``."""
    path = Path(path)
    arrays = read_npz(path)
    expected = _expected(graph)
    _check_names(path, arrays, expected, extra={LABEL_KEY})
    counts = set()
    for name, (shape, dtype) in expected.items():
        array = arrays[name]
        if array.shape == shape:  # a single sample given without the sample axis
            array = arrays[name] = array[None]
        elif shape and shape[0] == 1 and array.ndim == len(shape) and array.shape[1:] == shape[1:]:
            # The usual layout of a dataset for a batch-1 model: samples stacked on the batch axis.
            array = arrays[name] = array[:, None]
        if array.shape[1:] != shape:
            raise EdgecError(
                f"'{path}': input '{name}' has shape {list(array.shape)}; expected N samples of "
                f"{list(shape)}, i.e. [N, {', '.join(map(str, shape))}]"
            )
        _check_values(path, name, array, dtype)
        counts.add(len(array))
    if labelled:
        if LABEL_KEY not in arrays:
            raise EdgecError(f"'{path}' has no '{LABEL_KEY}' array; accuracy needs labels")
        counts.add(len(arrays[LABEL_KEY]))
    if len(counts) > 1:
        raise EdgecError(f"'{path}': arrays hold different sample counts {sorted(counts)}")
    if counts == {0}:
        raise EdgecError(f"'{path}' holds no samples")
    return arrays


def samples_of(dataset: dict[str, np.ndarray], graph: EdgeGraph) -> dict[str, np.ndarray]:
    """Only the model inputs of a dataset (drops ``label``)."""
    names = {t.name for t in graph.inputs}
    return {k: v for k, v in dataset.items() if k in names}


def as_samples(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` with a leading sample axis for an input of ``shape`` (returned as is if it does not fit).

    Accepts ``[N, *shape]``, a single sample of ``shape``, and ``[N, *shape[1:]]`` for a batch-1
    input: datasets often stack samples along the batch axis (``[N, C, H, W]`` for ``[1, C, H, W]``).
    """
    if array.shape == shape:
        return array[None]
    if shape and shape[0] == 1 and array.shape[1:] == shape[1:]:
        return array[:, None]
    return array
