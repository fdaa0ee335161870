"""ONNX → Relax import through the TVM relax ONNX frontend, with edgec's error reporting.

The frontend's own failure modes are raw Python/TVM exceptions that name an op but rarely a node;
this module checks the graph up front (cheaply, without importing anything from TVM) and turns
whatever the frontend still raises into an :class:`~edgec.errors.EdgecError` that names the node.
The ``edgec``-domain nodes of a legal graph (integer kernels, packed weights) are edgec's own
emission (:mod:`.translate`), so they count as supported.
"""

from __future__ import annotations

import contextlib
import io
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import onnx

from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.targets.integer.kernels import KINDS
from edgec.targets.tvm.packed_layout import PACKED_DOMAIN, PACKED_OP
from edgec.targets.tvm.sparse_layout import SPARSE_OP

if TYPE_CHECKING:
    import tvm

__all__ = ["EDGEC_OPS", "import_onnx", "input_signature", "run_frontend", "unsupported", "unsupported_nodes"]

# The frontend ignores a node's domain and looks up the bare op type, so a custom-domain op that
# happens to share a name with an ONNX op would be silently converted as the wrong thing; only the
# default domain and the com.microsoft contrib ops it knows (Gelu, Attention, ...) are safe.
_SUPPORTED_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})
# edgec's own ops in a legal graph, emitted by edgec (not the frontend).
EDGEC_OPS = frozenset({kind.op_type for kind in KINDS if kind.op_type} | {PACKED_OP, SPARSE_OP})


def _frontend_op_types() -> frozenset[str]:
    """Op types the installed frontend converts: its convert map, plus ``If`` (handled inline)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map()) | {"If"}


def _node_label(node: onnx.NodeProto) -> str:
    """A name for a node that users can find in Netron: its name, else its first output."""
    if node.name:
        return node.name
    outputs = [o for o in node.output if o]
    return f"<{node.op_type} -> {outputs[0]}>" if outputs else f"<unnamed {node.op_type}>"


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` in order, each followed by the nodes of its subgraphs."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _walk(sub)


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """List the nodes that the TVM relax ONNX frontend cannot convert.

    A static check on the graph (including `If`/`Loop` bodies): no model import, no shape
    inference. Nodes in an unknown domain are reported even when their op type has a converter,
    because the frontend would convert them as the standard op of the same name.

    Args:
        model: The ONNX model.

    Returns:
        One ``(node name, op type, reason)`` per unsupported node, in graph order.
    """
    known = _frontend_op_types()
    found: list[tuple[str, str, str]] = []
    for node in _walk(model.graph):
        if node.domain == PACKED_DOMAIN and node.op_type in EDGEC_OPS:
            continue
        if node.domain not in _SUPPORTED_DOMAINS:
            reason = (
                f"the TVM relax ONNX frontend only converts standard ONNX ops, and "
                f"{node.op_type} is in the custom domain '{node.domain}'"
            )
        elif node.op_type not in known:
            reason = f"the TVM relax ONNX frontend has no converter for {node.op_type}"
        else:
            continue
        found.append((_node_label(node), node.op_type, reason))
    return found


def unsupported(model: onnx.ModelProto) -> list[UnsupportedNodeError]:
    """:func:`unsupported_nodes` as errors (what ``Target.unsupported`` returns)."""
    return [UnsupportedNodeError(name, op, reason) for name, op, reason in unsupported_nodes(model)]


def input_signature(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Static shapes and dtypes of the graph inputs (initializers excluded)."""
    overrides = dict(input_shapes or {})
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise EdgecError(
            f"input_shapes names {unknown}, which are not inputs of the model; its inputs are {names}"
        )
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    for value in inputs:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise EdgecError(f"input '{value.name}' is not a tensor; edgec only compiles tensors")
        dtypes[value.name] = str(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        dims = (
            [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in tensor_type.shape.dim]
            if tensor_type.HasField("shape")
            else None
        )
        if value.name in overrides:
            shape = [int(d) for d in overrides[value.name]]
            if dims is not None and len(dims) != len(shape):
                raise EdgecError(
                    f"input_shapes gives input '{value.name}' the shape {tuple(shape)}, but the "
                    f"model declares rank {len(dims)}: {dims}"
                )
            shapes[value.name] = shape
        elif dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
            shapes[value.name] = [int(d) for d in dims]
        else:
            raise EdgecError(
                f"input '{value.name}' has no static shape ({dims}); give one, e.g. "
                f"input_shapes={{'{value.name}': (1, 3, 224, 224)}}"
            )
    return shapes, dtypes


def _failing_node(err: BaseException) -> onnx.NodeProto | None:
    """The ONNX node the frontend was converting when ``err`` was raised, if any.

    The frontend's converters only know op types, but its loops over the graph
    (``_construct_nodes``, ``_convert_subgraph``) hold the node in a local variable; the
    innermost such frame is the node that failed.
    """
    node = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        candidate = frame.f_locals.get("node")
        if isinstance(candidate, onnx.NodeProto):
            node = candidate
    return node


# What the relax frontend raises when it fails on a node (TVM 0.27 errors are RuntimeError
# subclasses; converters also fail with plain Python errors on unexpected attributes).
FRONTEND_ERRORS = (
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    AssertionError,
    NotImplementedError,
)


def run_frontend(convert: Callable[[], tvm.IRModule]) -> tvm.IRModule:
    """Runs a frontend conversion with its chatter silenced; a failure becomes an ``EdgecError``
    that names the node and keeps the frontend's own message."""
    chatter = io.StringIO()
    try:
        # The frontend prints "Error converting operator ..." to stdout and warns about input
        # renaming and checker nits; edgec reports errors itself, so keep stdout clean.
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert()
    except FRONTEND_ERRORS as err:
        node = _failing_node(err)
        where = f"{node.op_type} '{_node_label(node)}'" if node is not None else "the model"
        detail = str(err).strip() or type(err).__name__
        raise EdgecError(
            f"the TVM relax ONNX frontend failed on {where}: {type(err).__name__}: {detail}. "
            "Fixing the input shapes and simplifying the model (onnxslim) often helps."
        ) from err


def import_onnx(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> tvm.IRModule:
    """Import an ONNX model that needs no legalization into a Relax IRModule (weights as constants).

    Args:
        model: The ONNX model; it is not modified.
        input_shapes: Static shapes for inputs whose declared shape is dynamic (or to override
            the declared one).

    Returns:
        The Relax module, with function ``main`` taking the graph inputs in order.

    Raises:
        UnsupportedNodeError: For the first node the frontend has no converter for.
        EdgecError: If an input has no static shape, or the frontend fails on a node (the
            message names the node and keeps the frontend's own message).
    """
    from edgec.ir import EdgeGraph

    from .translate import translate

    return translate(EdgeGraph.from_onnx(model), input_shapes)
