"""Lossless cleanup: dead code, no-op nodes, and chains of layout ops (constant folding is in
``folding``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, static_shape
from edgec.passes.common import RewritePass
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.rewrite import Match, Op, Optional, Rule, RuleSet, Var, forward

# ----- shared helpers --------------------------------------------------------------------------


def _keeps_output_name(graph: EdgeGraph, old: gs.Tensor, new: gs.Tensor) -> str | None:
    """Why ``old`` cannot simply be replaced by ``new`` without a copy node, or ``None``.

    ``forward`` renames ``new`` to keep a graph output's name; it cannot rename a graph input, a
    constant or another output, and would need an Identity, which is what we are removing.
    """
    if not graph.is_graph_output(old):
        return None
    if isinstance(new, gs.Constant) or not new.inputs or graph.is_graph_output(new):
        return "it writes a graph output from a graph input, constant or other output (keeps the name)"
    return None


def _int_list(tensor: gs.Tensor | None) -> list[int] | None:
    if not isinstance(tensor, gs.Constant):
        return None
    return [int(v) for v in np.asarray(tensor.values).reshape(-1)]


def _np_dtype(tensor: gs.Tensor) -> np.dtype | None:
    try:
        return None if tensor.dtype is None else np.dtype(tensor.dtype)
    except TypeError:
        return None


# ----- eliminate-dead-code ---------------------------------------------------------------------


@register
@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Removes nodes whose outputs nobody uses and initializers no node reads."""

    name: ClassVar[str] = "eliminate-dead-code"
    lossless: ClassVar[bool] = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        nodes_before = len(graph.nodes)
        constants_before = sum(1 for _ in graph.constants())
        graph.cleanup()
        removed_nodes = nodes_before - len(graph.nodes)
        removed_constants = constants_before - sum(1 for _ in graph.constants())
        stats = {"removed_nodes": removed_nodes, "removed_initializers": removed_constants}
        return PassResult(graph, changed=removed_nodes + removed_constants > 0, stats=stats)


# ----- eliminate-identity ----------------------------------------------------------------------


def _forward_input(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """y = x: every reader of the node's output reads its data input instead."""
    return forward(match, graph, match.outputs[0], match["x"])


def _identity_check(match: Match, graph: EdgeGraph) -> str | None:
    return _keeps_output_name(graph, match.outputs[0], match["x"])


def _dropout_check(match: Match, graph: EdgeGraph) -> str | None:
    node = match["node"]
    if graph.opset < 7 and not node.attrs.get("is_test", 0):
        return "Dropout is in training mode (is_test=0)"
    training = match["training_mode"]
    if training is not None and (not isinstance(training, gs.Constant) or bool(np.any(training.values))):
        return "Dropout's training_mode is not a constant false"
    if len(match.outputs) > 1 and (match.outputs[1].outputs or graph.is_graph_output(match.outputs[1])):
        return "Dropout's mask output is used"
    return _identity_check(match, graph)


def _reshape_check(match: Match, graph: EdgeGraph) -> str | None:
    target, shape = _int_list(match["shape"]), static_shape(match["x"])
    if target is None or shape is None:
        return "the target shape or the input's shape is not static"
    allow_zero = bool(match["node"].attrs.get("allowzero", 0))
    resolved = [shape[i] if d == 0 and not allow_zero and i < len(shape) else d for i, d in enumerate(target)]
    if -1 in resolved:
        known = int(np.prod([d for d in resolved if d != -1], dtype=np.int64))
        resolved[resolved.index(-1)] = int(np.prod(shape, dtype=np.int64)) // max(known, 1)
    if tuple(resolved) != shape:
        return f"it reshapes {list(shape)} to {resolved}"
    return None


def _transpose_check(match: Match, graph: EdgeGraph) -> str | None:
    perm = match["node"].attrs.get("perm")
    if perm is None:
        shape = match["x"].shape
        if shape is None or len(shape) > 1:
            return "perm is omitted (reverse) and the input rank is unknown or above 1"
    elif list(perm) != list(range(len(perm))):
        return f"perm {list(perm)} is not the identity"
    return _identity_check(match, graph)


def _cast_check(match: Match, graph: EdgeGraph) -> str | None:
    source = _np_dtype(match["x"])
    target = onnx.helper.tensor_dtype_to_np_dtype(int(match["node"].attrs["to"]))
    if source is None:
        return "the input dtype is unknown"
    if source != target:
        return f"it casts {source.name} to {target.name}"
    return _identity_check(match, graph)


def _no_op_reshape_check(match: Match, graph: EdgeGraph) -> str | None:
    return _reshape_check(match, graph) or _identity_check(match, graph)


IDENTITY_RULES = RuleSet(
    [
        Rule("identity", Op("Identity", Var("x"), name="node"), _forward_input, _identity_check),
        Rule(
            "dropout",
            Op("Dropout", Var("x"), Optional(Var("ratio")), Optional(Var("training_mode")), name="node"),
            _forward_input,
            _dropout_check,
        ),
        Rule(
            "reshape",
            Op("Reshape", Var("x"), Var("shape"), name="node"),
            _forward_input,
            _no_op_reshape_check,
        ),
        Rule("transpose", Op("Transpose", Var("x"), name="node"), _forward_input, _transpose_check),
        Rule("cast", Op("Cast", Var("x"), name="node"), _forward_input, _cast_check),
    ]
)


@register
@dataclass(frozen=True)
class EliminateIdentity(RewritePass):
    """Removes Identity, inference Dropout and no-op Reshape, Transpose and Cast nodes."""

    name: ClassVar[str] = "eliminate-identity"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = IDENTITY_RULES
    counter: ClassVar[str] = "removed"
    needs_shapes: ClassVar[frozenset[str]] = frozenset({"Reshape", "Transpose", "Cast"})


# ----- merge-transposes ------------------------------------------------------------------------


def _perm(node: gs.Node, rank: int | None) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return list(perm)
    return None if rank is None else list(range(rank))[::-1]


def _merge_transposes_check(match: Match, graph: EdgeGraph) -> str | None:
    shape = match["x"].shape
    rank = None if shape is None else len(shape)
    if _perm(match["inner"], rank) is None or _perm(match["outer"], rank) is None:
        return "a perm is omitted (reverse) and the input rank is unknown"
    return None


def _merge_transposes(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """transpose(transpose(x, p1), p2) = transpose(x, p) with p[i] = p1[p2[i]]."""
    shape = match["x"].shape
    inner = _perm(match["inner"], None if shape is None else len(shape))
    outer = _perm(match["outer"], len(inner))
    perm = [inner[axis] for axis in outer]
    if perm == list(range(len(perm))):
        return forward(match, graph, match.outputs[0], match["x"])
    outer_node = match["outer"]
    return [
        gs.Node(
            "Transpose",
            name=outer_node.name,
            attrs={"perm": perm},
            inputs=[match["x"]],
            outputs=match.outputs,
        )
    ]


TRANSPOSE_RULES = RuleSet(
    [
        Rule(
            "transpose-transpose",
            Op("Transpose", Op("Transpose", Var("x"), name="inner"), name="outer"),
            _merge_transposes,
            _merge_transposes_check,
        )
    ]
)


@register
@dataclass(frozen=True)
class MergeTransposes(RewritePass):
    """Merges a Transpose of a Transpose into one Transpose, or removes both when they cancel."""

    name: ClassVar[str] = "merge-transposes"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = TRANSPOSE_RULES
    counter: ClassVar[str] = "merged"
    needs_shapes: ClassVar[frozenset[str]] = frozenset({"Transpose"})


# ----- merge-reshapes --------------------------------------------------------------------------

_RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _final_shape(match: Match) -> tuple[list[int] | None, str]:
    """The shape the chain produces, or ``None`` and the reason it is unknown."""
    # Bound tensors, not node.inputs: the driver detaches matched nodes before the replacement.
    for part in ("inner", "outer"):
        operand = match[f"{part}_shape"]
        if operand is not None and not isinstance(operand, gs.Constant):
            node = match[part]
            return None, f"{node.op} '{node.name}' has a shape or axes computed at run time"
    outer = match["outer"]
    target = _int_list(match["outer_shape"]) if outer.op == "Reshape" else None
    # A constant Reshape target without 0 (copy a dimension) means the same thing after any input.
    if target is not None and (0 not in target or outer.attrs.get("allowzero", 0)):
        return target, ""
    shape = static_shape(match.outputs[0])
    if shape is None:
        return None, "the chain's output shape is not static"
    if 0 in shape:
        return None, "the chain's output has a zero-size dimension"
    return list(shape), ""


def _merge_reshapes_check(match: Match, graph: EdgeGraph) -> str | None:
    shape, reason = _final_shape(match)
    return reason if shape is None else None


def _merge_reshapes(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    """reshape(reshape(x, s1), s2) = reshape(x, s2) (Flatten/Squeeze/Unsqueeze are reshapes)."""
    shape, _ = _final_shape(match)
    if static_shape(match["x"]) == tuple(shape):
        return forward(match, graph, match.outputs[0], match["x"])
    outer = match["outer"]
    attrs = {"allowzero": 1} if outer.op == "Reshape" and outer.attrs.get("allowzero", 0) else {}
    target = graph.add_constant(f"{outer.name}_shape", np.array(shape, dtype=np.int64))
    return [
        gs.Node("Reshape", name=outer.name, attrs=attrs, inputs=[match["x"], target], outputs=match.outputs)
    ]


RESHAPE_RULES = RuleSet(
    [
        Rule(
            "reshape-chain",
            Op(
                _RESHAPE_LIKE,
                Op(_RESHAPE_LIKE, Var("x"), Optional(Var("inner_shape")), name="inner"),
                Optional(Var("outer_shape")),
                name="outer",
            ),
            _merge_reshapes,
            _merge_reshapes_check,
        )
    ]
)


@register
@dataclass(frozen=True)
class MergeReshapes(RewritePass):
    """Merges chains of Reshape, Flatten, Squeeze and Unsqueeze with constant shapes into one Reshape."""

    name: ClassVar[str] = "merge-reshapes"
    lossless: ClassVar[bool] = True
    rules: ClassVar[RuleSet] = RESHAPE_RULES
    counter: ClassVar[str] = "merged"
    needs_shapes: ClassVar[frozenset[str]] = frozenset(_RESHAPE_LIKE)
