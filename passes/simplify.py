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
    """Runs ``onnxslim.slim`` on a copy of ``model`` and returns the simplified model.

    Raises:
        ValueError: if onnxslim changed the model's inputs or outputs (it must not).
        Any of ``_SLIM_ERRORS``: whatever onnxslim raised.
    """
    import onnxslim

    work = onnx.ModelProto()
    work.CopyFrom(model)
    # onnxslim logs at WARNING for things edgec reports itself (e.g. large folded constants).
    logger = logging.getLogger("onnxslim")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        slimmed = onnxslim.slim(work)
    finally:
        logger.setLevel(level)
    if slimmed is None:
        raise ValueError("onnxslim returned no model")
    if _value_names(slimmed.graph.output) != _value_names(model.graph.output):
        raise ValueError(
            f"onnxslim changed the outputs from {_value_names(model.graph.output)} to "
            f"{_value_names(slimmed.graph.output)}"
        )
    initializers = {t.name for t in model.graph.initializer}
    wanted = [name for name in _value_names(model.graph.input) if name not in initializers]
    got = _value_names(slimmed.graph.input)
    if got != wanted:
        _restore_inputs(model, slimmed, wanted)
    return slimmed


def _restore_inputs(original: onnx.ModelProto, slimmed: onnx.ModelProto, wanted: list[str]) -> None:
    # An input that no node reads any more (e.g. the one a folded If branched on) is still part of
    # the model's calling convention: callers feed it, so it stays declared.
    declared = {value.name: value for value in original.graph.input}
    present = {value.name: value for value in slimmed.graph.input}
    unknown = set(present) - set(wanted)
    if unknown:
        raise ValueError(f"onnxslim added the inputs {sorted(unknown)}")
    del slimmed.graph.input[:]
    slimmed.graph.input.extend(copy.deepcopy(present.get(name, declared[name])) for name in wanted)


@register
@dataclass(frozen=True)
class Simplify(Pass):
    """Simplifies the graph with onnxslim: folds constants and shapes, inlines constant If nodes."""

    name: ClassVar[str] = "simplify"
    lossless: ClassVar[bool] = True
    in_place: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        model = graph.to_onnx()
        before = _op_counts(model)
        try:
            slimmed = slim_model(model)
        except _SLIM_ERRORS as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            message = (
                f"onnxslim could not simplify the model ({type(exc).__name__}: {detail}); "
                "continuing with the unsimplified graph"
            )
            ctx.warn(message)
            nodes = sum(before.values())
            return PassResult(
                graph,
                changed=False,
                stats={"nodes_before": nodes, "nodes_after": nodes, "skipped": message},
            )
        after = _op_counts(slimmed)
        simplified = EdgeGraph(gs.import_onnx(slimmed), copy.deepcopy(graph.info))
        removed = {op: before[op] - after[op] for op in sorted(before) if before[op] > after[op]}
        added = {op: after[op] - before[op] for op in sorted(after) if after[op] > before[op]}
        changed = _canonical(model) != _canonical(simplified.to_onnx())
        return PassResult(
            simplified if changed else graph,
            changed=changed,
            stats={
                "nodes_before": sum(before.values()),
                "nodes_after": sum(after.values()),
                "removed": removed,
                "added": added,
            },
        )


def _canonical(model: onnx.ModelProto) -> bytes:
    # Node names and value_info differ after a round trip even when nothing was simplified;
    # compare what computes.
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]
    for node in stripped.graph.node:
        node.name = ""
    return stripped.graph.SerializeToString(deterministic=True)


register_pipeline(
    "import",
    "simplify,inline-constant-if,decompose-lstm,decompose-gru,decompose-rnn,unroll-loops,simplify",
    description=(
        "What every model goes through on import: onnxslim simplification, constant If nodes "
        "inlined, recurrent layers decomposed and constant loops unrolled, then simplified again"
    ),
)
