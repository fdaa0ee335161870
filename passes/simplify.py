"""Import-time simplification with onnxslim, and the ``import`` pipeline that starts every build.

Exports from training frameworks compute Reshape targets at run time (Shape → Gather → Concat
chains) and branch on constants (sample rates, input ranks). Once the input shapes are static and
chosen inputs frozen, onnxslim folds all of that (constant folding, shape folding, constant-``If``
flattening, nested ones included, plus dead-node and common-subexpression elimination). DESIGN.md
has the measurements; edgec relies on that well-kept library rather than its own shape folder.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import onnx
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult, register, register_pipeline

# onnxslim is a large pure-Python code base that can fail on models it does not understand with
# any of these; each is caught by name so that a bug in edgec itself still shows its traceback.
_SLIM_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    AssertionError,
    RuntimeError,
    NotImplementedError,
    ArithmeticError,
    RecursionError,
    onnx.checker.ValidationError,
    onnx.shape_inference.InferenceError,
)


def _op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def _value_names(values: Any) -> list[str]:
    return [value.name for value in values]


def slim_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Runs ``onnxslim.slim`` on ``model`` (which it changes: pass a model of your own) and returns
    the simplified model.

    Raises:
        ValueError: if onnxslim changed the model's inputs or outputs (it must not).
        Any of ``_SLIM_ERRORS``: whatever onnxslim raised.
    """
    import onnxslim

    outputs = _value_names(model.graph.output)
    initializers = {t.name for t in model.graph.initializer}
    declared = {value.name: copy.deepcopy(value) for value in model.graph.input}
    wanted = [name for name in declared if name not in initializers]
    # onnxslim logs at WARNING for things edgec reports itself (e.g. large folded constants).
    logger = logging.getLogger("onnxslim")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        slimmed = onnxslim.slim(model)
    finally:
        logger.setLevel(level)
    if slimmed is None:
        raise ValueError("onnxslim returned no model")
    if _value_names(slimmed.graph.output) != outputs:
        raise ValueError(
            f"onnxslim changed the outputs from {outputs} to {_value_names(slimmed.graph.output)}"
        )
    if _value_names(slimmed.graph.input) != wanted:
        _restore_inputs(declared, slimmed, wanted)
    return slimmed


def _restore_inputs(
    declared: dict[str, onnx.ValueInfoProto], slimmed: onnx.ModelProto, wanted: list[str]
) -> None:
    # An input that no node reads any more (e.g. the one a folded If branched on) is still part of
    # the model's calling convention: callers feed it, so it stays declared.
    present = {value.name: value for value in slimmed.graph.input}
    unknown = set(present) - set(wanted)
    if unknown:
        raise ValueError(f"onnxslim added the inputs {sorted(unknown)}")
    restored = [copy.deepcopy(present.get(name, declared[name])) for name in wanted]
    del slimmed.graph.input[:]
    slimmed.graph.input.extend(restored)


def _computation(model: onnx.ModelProto) -> tuple:
    """What a model computes, up to node order, node names, value infos and weight bytes: its
    nodes with their attributes, its inputs and outputs with their types, and each initializer's
    name, type and dimensions.

    Two models with the same form can only differ in the bytes of an initializer of the same
    name; onnxslim never rewrites those in place (folding makes new tensors), and if it did,
    keeping the graph it was given would still be correct.
    """
    nodes = Counter(
        (
            node.op_type,
            node.domain,
            tuple(node.input),
            tuple(node.output),
            tuple(a.SerializeToString(deterministic=True) for a in node.attribute),
        )
        for node in model.graph.node
    )
    boundary = tuple(
        (value.name, value.type.SerializeToString(deterministic=True))
        for value in (*model.graph.input, *model.graph.output)
    )
    weights = frozenset(
        (tensor.name, tensor.data_type, tuple(tensor.dims)) for tensor in model.graph.initializer
    )
    return nodes, boundary, weights


def _inputs_key(graph: EdgeGraph) -> tuple:
    return tuple((t.name, str(t.dtype), tuple(t.shape or ())) for t in graph.inputs)


# Graphs onnxslim already simplified, with their fingerprint and input shapes at the time:
# onnxslim iterates to its own fixed point, so a graph nothing changed since needs no second run.
_SIMPLIFIED: weakref.WeakKeyDictionary[EdgeGraph, tuple[int, tuple]] = weakref.WeakKeyDictionary()


@register
@dataclass(frozen=True)
class Simplify(Pass):
    """Simplifies the graph with onnxslim: folds constants and shapes, inlines constant If nodes."""

    name: ClassVar[str] = "simplify"
    lossless: ClassVar[bool] = True
    in_place: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        nodes = len(graph.nodes)
        if _SIMPLIFIED.get(graph) == (graph.fingerprint(), _inputs_key(graph)):
            stats = {"nodes_before": nodes, "nodes_after": nodes, "skipped": "unchanged since simplified"}
            return PassResult(graph, changed=False, stats=stats)
        model = graph.to_onnx()
        before = _op_counts(model)
        computation = _computation(model)
        try:
            slimmed = slim_model(model)
        except _SLIM_ERRORS as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            message = (
                f"onnxslim could not simplify the model ({type(exc).__name__}: {detail}); "
                "continuing with the unsimplified graph"
            )
            ctx.warn(message)
            return PassResult(
                graph, changed=False, stats={"nodes_before": nodes, "nodes_after": nodes, "skipped": message}
            )
        after = _op_counts(slimmed)
        changed = _computation(slimmed) != computation
        result = EdgeGraph(gs.import_onnx(slimmed), copy.deepcopy(graph.info)) if changed else graph
        _SIMPLIFIED[result] = (result.fingerprint(), _inputs_key(result))
        removed = {op: before[op] - after[op] for op in sorted(before) if before[op] > after[op]}
        added = {op: after[op] - before[op] for op in sorted(after) if after[op] > before[op]}
        return PassResult(
            result,
            changed=changed,
            stats={
                "nodes_before": sum(before.values()),
                "nodes_after": sum(after.values()),
                "removed": removed,
                "added": added,
            },
        )


register_pipeline(
    "import",
    "simplify,inline-constant-if,decompose-lstm,decompose-gru,decompose-rnn,unroll-loops,simplify",
    description=(
        "What every model goes through on import: onnxslim simplification, constant If nodes "
        "inlined, recurrent layers decomposed and constant loops unrolled, then simplified again"
    ),
)
