"""Input shapes: parsing ``name=1x3x224x224``, fixing symbolic dimensions, shape inference."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir.graph import EdgeGraph

InputShapes = dict[str, tuple[int, ...]]


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses ``1x3x224x224`` or ``1,3,224,224`` (``[]`` or an empty string for a scalar)."""
    text = text.strip().strip("[]()")
    if not text:
        return ()
    parts = re.split(r"[x,]", text)
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise EdgecError(f"bad shape '{text}': write dimensions as 1x3x224x224") from None
    if any(d <= 0 for d in dims):
        raise EdgecError(f"bad shape '{text}': every dimension must be a positive integer")
    return dims


def format_shape(shape) -> str:
    """A shape as ``1x3x224x224``: a named dimension shows its name, an unknown one ``?``
    (``?x576``), an unknown rank ``?``."""
    if shape is None:
        return "?"
    return "x".join(
        d if isinstance(d, str) and d else str(d) if isinstance(d, int) and d >= 0 else "?" for d in shape
    )


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parses ``--input-shape name=1x3x224x224``."""
    name, sep, shape = spec.partition("=")
    if not sep or not name:
        raise EdgecError(f"bad --input-shape '{spec}': write it as NAME=1x3x224x224")
    return name.strip(), parse_shape(shape)


def fix_input_shapes(graph: EdgeGraph, shapes: InputShapes | None) -> None:
    """Sets the user-given input shapes, then requires every input to be fully static.

    Raises:
        EdgecError: for an unknown input name, a shape of the wrong rank, a shape that contradicts
            a static dimension, or an input left with a symbolic dimension.
    """
    shapes = dict(shapes or {})
    by_name = {tensor.name: tensor for tensor in graph.inputs}
    for name, shape in shapes.items():
        if name not in by_name:
            raise EdgecError(f"--input-shape names '{name}', but the model's inputs are {sorted(by_name)}")
        tensor = by_name[name]
        declared = tensor.shape
        if declared is not None and len(declared) != len(shape):
            raise EdgecError(
                f"input '{name}' has rank {len(declared)} (shape {list(declared)}), "
                f"but --input-shape gives {list(shape)}"
            )
        for dim, given in zip(declared or (), shape, strict=False):
            if isinstance(dim, int) and dim > 0 and dim != given:
                raise EdgecError(
                    f"input '{name}' has static shape {list(declared)}; --input-shape "
                    f"{'x'.join(map(str, shape))} contradicts it"
                )
        tensor.shape = list(shape)
    for tensor in graph.inputs:
        if tensor.shape is None or not all(isinstance(d, int) and d > 0 for d in tensor.shape):
            shown = format_shape(tensor.shape)
            raise EdgecError(
                f"input '{tensor.name}' has a symbolic or unknown shape ({shown}); fix it with "
                f"--input-shape {tensor.name}=1x... (for example batch 1)"
            )
    _clear_intermediate_shapes(graph)


def _clear_intermediate_shapes(graph: EdgeGraph) -> None:
    # Shapes recorded for intermediate tensors may still hold the old symbolic dimensions;
    # dropping them lets inference recompute them from the fixed inputs.
    inputs = {id(t) for t in graph.inputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in inputs:
            tensor.shape = None
    for tensor in graph.outputs:
        tensor.shape = None


# Shape inference needs a weight's dtype and shape, not its bytes; small constants (Reshape
# targets, Slice bounds ...) keep their values for data propagation.
_WEIGHT_BYTES = 4096


def infer_shapes(graph: EdgeGraph) -> None:
    """Annotates every tensor with the dtype and shape ONNX shape inference derives.

    The model inference reads is built from the graph with its large constants as typed inputs:
    no weight bytes are copied or serialized, whatever the model's size.
    """
    model = graph.to_onnx(weight_limit=_WEIGHT_BYTES)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise EdgecError(f"ONNX shape inference failed: {str(exc).strip().splitlines()[0]}") from None
    infos = {
        vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    for name, tensor in graph.tensors().items():
        if not isinstance(tensor, gs.Variable) or name not in infos:
            continue
        type_proto = infos[name].type
        if not type_proto.HasField("tensor_type"):
            continue
        tensor_type = type_proto.tensor_type
        if tensor_type.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if tensor_type.HasField("shape"):
            tensor.shape = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            ]


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The tensor's shape if every dimension is a known integer, else ``None``."""
    if tensor.shape is None or not all(isinstance(d, (int, np.integer)) for d in tensor.shape):
        return None
    return tuple(int(d) for d in tensor.shape)
