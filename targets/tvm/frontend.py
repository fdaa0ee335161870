"""ONNX → Relax import through the TVM relax ONNX frontend, with edgec's error reporting.

The frontend's own failure modes are raw Python/TVM exceptions that name an op but rarely a node;
this module checks the graph up front (cheaply, without importing anything from TVM) and turns
whatever the frontend still raises into an :class:`~edgec.errors.EdgecError` that names the node.
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

if TYPE_CHECKING:
    import tvm

__all__ = ["import_onnx", "unsupported", "unsupported_nodes"]

# The frontend ignores a node's domain and looks up the bare op type, so a custom-domain op that
# happens to share a name with an ONNX op would be silently converted as the wrong thing; only the
# default domain and the com.microsoft contrib ops it knows (Gelu, Attention, ...) are safe.
_SUPPORTED_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})


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


def _replace_dropout(graph: onnx.GraphProto) -> None:
    """Turn inference-mode Dropout nodes into Identity, in place, subgraphs included.

    Relax ``nn.dropout`` returns a (output, mask) tuple and ``ConvertLayout`` crashes on it
    ("Expected nested to match tuple"); at inference Dropout is the identity anyway. Nodes
    whose mask output is consumed are left alone (rare, and Identity cannot produce a mask).
    """
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    for node in graph.node:
        for sub in _subgraphs(node):
            _replace_dropout(sub)
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.output) > 1 and node.output[1] and node.output[1] in used:
            continue
        data_in, data_out = node.input[0], node.output[0]
        del node.input[:]
        del node.output[:]
        del node.attribute[:]
        node.input.append(data_in)
        node.output.append(data_out)
        node.op_type = "Identity"


def _split_sum(graph: onnx.GraphProto) -> None:
    """Rewrite n-ary ``Sum`` as a chain of ``Add`` (or ``Identity``), in place, subgraphs included.

    The frontend lowers ``Sum`` to ``broadcast_to`` + ``stack`` + ``sum(axis=0)``: a 5-D stack that
    costs a copy and that ``ConvertLayout`` rejects ("Invalid SLayout: can't find S in source
    layout ABCDE"), which breaks every ResNet exported with ``Sum`` for the residual add. ``Add``
    has the same multidirectional broadcasting.
    """
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for sub in _subgraphs(node):
            _split_sum(sub)
        if node.op_type != "Sum" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        inputs, out = list(node.input), node.output[0]
        base = node.name or out
        if len(inputs) == 1:
            nodes.append(onnx.helper.make_node("Identity", inputs, [out], name=base))
            continue
        acc = inputs[0]
        for k, operand in enumerate(inputs[1:], start=1):
            last = k == len(inputs) - 1
            target = out if last else f"{out}__edgec_sum{k}"
            name = base if last else f"{base}__edgec_sum{k}"
            nodes.append(onnx.helper.make_node("Add", [acc, operand], [target], name=name))
            acc = target
    del graph.node[:]
    graph.node.extend(nodes)


def _input_signature(
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


def prepare_for_frontend(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[onnx.ModelProto, dict[str, list[int]], dict[str, str]]:
    """Checks coverage and returns a copy of the model the frontend can take, with its input
    shapes and dtypes (Dropout made Identity, n-ary Sum split into Adds).

    Raises:
        UnsupportedNodeError: For the first node the frontend has no converter for.
        EdgecError: If an input has no static shape.
    """
    problems = unsupported_nodes(model)
    if problems:
        raise UnsupportedNodeError(*problems[0])
    shapes, dtypes = _input_signature(model, input_shapes)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _replace_dropout(work.graph)
    _split_sum(work.graph)
    return work, shapes, dtypes


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
    """Import an ONNX model into a Relax IRModule with the weights as constants.

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
    from tvm.relax.frontend.onnx import from_onnx

    from .packed_weights import importer_class, rewrite_packed_dequantize

    work, shapes, dtypes = prepare_for_frontend(model, input_shapes)
    # Integer weights (int8/int4/int2 behind DequantizeLinear) stay integers (packed_weights.py).
    packed = rewrite_packed_dequantize(work, whole_bytes=True)
    if packed:
        opset = next((o.version for o in work.opset_import if o.domain in ("", "ai.onnx")), 1)
        importer = importer_class()(packed, shapes, dtypes, keep_params_in_input=False, sanitize=True)
        return run_frontend(lambda: importer.from_onnx(work.graph, opset))
    return run_frontend(
        lambda: from_onnx(work, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    )
