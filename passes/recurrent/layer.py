"""What a recurrent node says, validated: its weights, directions, shapes and the refusals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import Fix, UnsupportedNodeError
from edgec.ir import dependency_fix, static_shape

DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass
class Layer:
    """A validated recurrent node: its constants as arrays, its shapes as integers."""

    node: gs.Node
    x: gs.Tensor
    w: np.ndarray  # [directions, gates*H, input]
    r: np.ndarray  # [directions, gates*H, H]
    b: np.ndarray  # [directions, 2*gates*H] (zeros when absent)
    initial_h: gs.Tensor | None
    initial_c: gs.Tensor | None
    seq: int
    batch: int
    hidden: int
    directions: list[str]  # "forward" / "reverse", one per direction index
    layout: int
    linear_before_reset: bool


def _optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None


def _constant(node: gs.Node, tensor: gs.Tensor | None, what: str) -> np.ndarray | None:
    if tensor is None:
        return None
    if not isinstance(tensor, gs.Constant):
        raise UnsupportedNodeError(
            node.name,
            node.op,
            f"its {what} '{tensor.name}' is not a constant; decomposition needs constant weights",
        )
    return np.asarray(tensor.values)


def validate(node: gs.Node) -> Layer:
    """Checks what the decomposition supports; raises ``UnsupportedNodeError`` saying what is not."""
    op = node.op
    attrs = node.attrs
    direction = str(attrs.get("direction", "forward"))
    if isinstance(attrs.get("direction"), bytes):
        direction = attrs["direction"].decode()
    directions = {"forward": ["forward"], "reverse": ["reverse"], "bidirectional": ["forward", "reverse"]}
    if direction not in directions:
        raise UnsupportedNodeError(node.name, op, f"direction '{direction}' is not an ONNX direction")
    count = len(directions[direction])
    activations = [str(a).lower() for a in attrs.get("activations", [])]
    default = DEFAULT_ACTIVATIONS[op]
    if activations and activations not in (default, default * count):
        raise UnsupportedNodeError(
            node.name,
            op,
            f"custom activations {attrs['activations']} are not supported (only the default {default})",
        )
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        raise UnsupportedNodeError(node.name, op, "activation_alpha/activation_beta are not supported")
    if attrs.get("clip") is not None:
        raise UnsupportedNodeError(node.name, op, "cell clipping ('clip') is not supported")
    if op == "LSTM" and int(attrs.get("input_forget", 0)):
        raise UnsupportedNodeError(
            node.name, op, "input_forget (coupled input and forget gates) is not supported"
        )
    layout = int(attrs.get("layout", 0))
    x = node.inputs[0]
    w = _constant(node, node.inputs[1], "weight W")
    r = _constant(node, node.inputs[2], "recurrence weight R")
    b = _constant(node, _optional_input(node, 3), "bias B")
    hidden = int(r.shape[-1])
    if b is None:
        b = np.zeros((count, 2 * GATES[op] * hidden), w.dtype)
    shape = static_shape(x)
    if shape is None or len(shape) != 3:
        shown = "unknown" if x.shape is None else list(x.shape)
        # Inputs are static by now (compile fixes them first): a length that still is symbolic comes
        # from an input's value, e.g. an If on a sample rate whose branches give different lengths.
        raise UnsupportedNodeError(
            node.name,
            op,
            f"input '{x.name}' has a symbolic sequence length or batch (shape {shown})",
            dependency_fix(x) or Fix("--input-shape", advice="fix the shapes of the model's inputs"),
        )
    seq, batch = (shape[1], shape[0]) if layout else (shape[0], shape[1])
    lengths = _optional_input(node, 4)
    if lengths is not None:
        values = np.asarray(lengths.values) if isinstance(lengths, gs.Constant) else None
        if values is None or not np.all(values == seq):
            raise UnsupportedNodeError(
                node.name,
                op,
                f"{op} with sequence_lens is not supported (sequence_lens '{lengths.name}' varies per "
                "batch entry or is computed at run time)",
                Fix(advice=f"export the model without sequence_lens on {op}"),
            )
    peepholes = _constant(node, _optional_input(node, 7), "peephole P") if op == "LSTM" else None
    if peepholes is not None and np.any(peepholes != 0):
        raise UnsupportedNodeError(node.name, op, "peephole connections (non-zero P) are not supported")
    return Layer(
        node=node,
        x=x,
        w=w,
        r=r,
        b=b,
        initial_h=_optional_input(node, 5),
        initial_c=_optional_input(node, 6) if op == "LSTM" else None,
        seq=seq,
        batch=batch,
        hidden=hidden,
        directions=directions[direction],
        layout=layout,
        linear_before_reset=bool(int(attrs.get("linear_before_reset", 0))),
    )
