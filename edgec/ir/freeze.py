"""Frozen inputs: ``--freeze-input NAME=VALUE`` turns a graph input into a constant.

Streaming and multi-rate models branch on inputs such as a sample rate or a mode flag; once such
an input is a constant, ``simplify`` folds the branches it selects away (nested ``If`` included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir.graph import EdgeGraph
from edgec.ir.shapes import static_shape

Scalar = bool | int | float
FreezeValue = np.ndarray | Scalar | Path


def _parse_scalar(text: str) -> Scalar | None:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(lowered)
    except ValueError:
        pass
    try:
        return float(lowered)
    except ValueError:
        return None


def parse_freeze(spec: str) -> tuple[str, FreezeValue]:
    """Parses ``NAME=VALUE`` from ``--freeze-input``.

    ``VALUE`` is a scalar (``16000``, ``1.5``, ``true``) or a path to a ``.npy`` or ``.npz`` file.
    A scalar comes back as a Python ``bool``/``int``/``float``; a ``.npy`` file as its array; a
    ``.npz`` file as the array stored under ``NAME``, or its only array.

    Raises:
        EdgecError: for a malformed spec, a missing or unreadable file, or an ``.npz`` file that
            has neither an array named ``NAME`` nor exactly one array.
    """
    name, sep, raw = spec.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name or not raw:
        raise EdgecError(
            f"bad --freeze-input '{spec}': write NAME=VALUE, with VALUE a number, true/false, "
            "or a .npy/.npz file"
        )
    scalar = _parse_scalar(raw)
    if scalar is not None:
        return name, scalar
    path = Path(raw)
    if path.suffix.lower() not in (".npy", ".npz"):
        raise EdgecError(
            f"bad --freeze-input '{spec}': '{raw}' is neither a number, true/false, nor a .npy/.npz file"
        )
    if not path.is_file():
        raise EdgecError(f"--freeze-input {name}: file '{path}' does not exist")
    try:
        # allow_pickle=False: a value file must never execute code.
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EdgecError(f"--freeze-input {name}: cannot read '{path}': {exc}") from None
    if isinstance(loaded, np.ndarray):
        return name, loaded
    with loaded:
        keys = list(loaded.files)
        if name in keys:
            return name, loaded[name]
        if len(keys) == 1:
            return name, loaded[keys[0]]
    raise EdgecError(
        f"--freeze-input {name}: '{path}' holds the arrays {keys}; store one named '{name}' "
        "(or only one array)"
    )


def _as_array(name: str, value: FreezeValue, dtype: np.dtype, shape: tuple[int, ...] | None) -> np.ndarray:
    """The frozen value as an array of the input's dtype and shape, or an ``EdgecError``."""
    if isinstance(value, Path):
        value = parse_freeze(f"{name}={value}")[1]
    if isinstance(value, (bool, int, float, np.generic)) and not isinstance(value, np.ndarray):
        scalar = value.item() if isinstance(value, np.generic) else value
        if dtype.kind == "b" and not isinstance(scalar, bool) and scalar not in (0, 1):
            raise EdgecError(f"input '{name}' is bool; freeze it with true or false, not {scalar}")
        if dtype.kind in "iu" and isinstance(scalar, float) and not float(scalar).is_integer():
            raise EdgecError(f"input '{name}' is {dtype}; {scalar} is not an integer")
        if dtype.kind in "iu" and not isinstance(scalar, bool):
            info = np.iinfo(dtype)
            if not info.min <= int(scalar) <= info.max:
                raise EdgecError(f"input '{name}' is {dtype}; {scalar} is out of its range")
        array = np.asarray(scalar).astype(dtype)
        if shape is None or shape in ((), (1,)):
            return array.reshape(shape or ())
        raise EdgecError(
            f"input '{name}' has shape {list(shape)}; a single value only freezes a scalar input "
            "(shape [] or [1]); give an array in a .npy/.npz file"
        )
    array = np.asarray(value)
    if array.dtype != dtype:
        raise EdgecError(
            f"input '{name}' is {dtype}, but the frozen array is {array.dtype}; convert it first"
        )
    if shape is not None and tuple(array.shape) != shape:
        raise EdgecError(
            f"input '{name}' has shape {list(shape)}, but the frozen array has shape {list(array.shape)}"
        )
    return array


def _record(array: np.ndarray) -> list[Any] | Scalar:
    return array.tolist() if array.ndim else array.item()


def freeze_inputs(graph: EdgeGraph, values: dict[str, FreezeValue]) -> dict[str, list[Any] | Scalar]:
    """Turns the named graph inputs into constants, in place.

    A Python scalar is cast to the input's dtype (an integer input refuses ``1.5``); an array must
    already have the input's dtype and shape. A scalar input may be declared ``[]`` or ``[1]``.

    Args:
        graph: the graph; the frozen inputs are removed from its inputs.
        values: the value of each input to freeze (scalar, array, or path to ``.npy``/``.npz``).

    Returns:
        The frozen values by input name as JSON values (for the manifest).

    Raises:
        EdgecError: for an unknown input, a dtype or shape that disagrees with the declared input,
            or freezing every input of the model.
    """
    if not values:
        return {}
    by_name = {tensor.name: tensor for tensor in graph.inputs}
    unknown = [name for name in values if name not in by_name]
    if unknown:
        raise EdgecError(f"--freeze-input names '{unknown[0]}', but the model's inputs are {list(by_name)}")
    if set(values) >= set(by_name):
        raise EdgecError(
            f"--freeze-input would freeze every input of the model ({list(by_name)}); a model needs "
            "at least one input left to compute anything"
        )
    frozen: dict[str, np.ndarray] = {}
    for name, value in values.items():
        tensor = by_name[name]
        if tensor.dtype is None:
            raise EdgecError(f"input '{name}' has no declared dtype; edgec cannot check the frozen value")
        shape = static_shape(tensor) if tensor.shape is not None else None
        if tensor.shape is not None and shape is None:
            raise EdgecError(
                f"input '{name}' has a symbolic shape {list(tensor.shape)}; freeze it with a "
                ".npy/.npz array after fixing its shape with --input-shape"
            )
        frozen[name] = _as_array(name, value, np.dtype(tensor.dtype), shape)
    for name, array in frozen.items():
        tensor = by_name[name]
        constant = gs.Constant(name, np.asarray(array, order="C"))
        # Subgraph nodes reading the input from the outer scope hold the same tensor object, so
        # ``tensor.outputs`` covers them too.
        for consumer in list(tensor.outputs):
            _replace_input(consumer, tensor, constant)
        graph.gs.outputs = [constant if t is tensor else t for t in graph.gs.outputs]
        graph.gs.inputs.remove(tensor)
    return {name: _record(frozen[name]) for name in values}


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    # Item assignment (not slices) keeps graphsurgeon's producer/consumer lists in sync.
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new
