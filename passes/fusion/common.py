"""What the fusion rules share: rank and dtype checks."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def is_float(values: np.ndarray) -> bool:
    return np.asarray(values).dtype.kind == "f"
