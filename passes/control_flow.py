"""Control flow the TVM frontend cannot lower, removed: constant ``If`` inlined, constant ``Loop`` unrolled.

Both passes work on the ONNX protobuf form, where a subgraph is a plain ``GraphProto`` whose
outer-scope references are names; copying a body and renaming its local names is then exact,
nested subgraphs included, which is harder to get right on onnx-graphsurgeon's object graph.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from edgec.errors import Fix, UnsupportedNodeError
from edgec.ir import EdgeGraph, dependency_fix
from edgec.pm import Pass, PassContext, PassResult, register


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _local_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph (and its nested subgraphs) defines: inputs, initializers, node outputs."""
    names = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        for sub in _subgraphs(node):
            names |= _local_names(sub)
    names.discard("")  # an empty name is a missing optional value, never renamed
    return names


def _rename(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Renames, in place and recursively, every occurrence of the names in ``mapping``."""

    def renamed(name: str) -> str:
        return mapping.get(name, name)

    for collection in (graph.input, graph.output, graph.value_info):
        for value in collection:
            value.name = renamed(value.name)
    for tensor in graph.initializer:
        tensor.name = renamed(tensor.name)
    for node in graph.node:
        node.input[:] = [renamed(name) for name in node.input]
        node.output[:] = [renamed(name) for name in node.output]
        for sub in _subgraphs(node):
            _rename(sub, mapping)


class _Names:
    """Hands out names unused anywhere in a model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.taken = _local_names(model.graph) | {node.name for node in model.graph.node}

    def fresh(self, base: str) -> str:
        candidate, index = base, 0
        while candidate in self.taken:
            index += 1
            candidate = f"{base}_{index}"
        self.taken.add(candidate)
        return candidate


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values known without running the graph: initializers and ``Constant`` node outputs."""
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_int", "value_float", "value_ints", "value_floats"):
                values[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return values


def _opset(model: onnx.ModelProto) -> int:
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 1)


def _unsqueeze0(name: str, out: str, opset: int, names: _Names) -> list[onnx.NodeProto]:
    if opset >= 13:
        axes = names.fresh(f"{out}_axes")
        return [
            helper.make_node("Constant", [], [axes], value=numpy_helper.from_array(np.array([0], np.int64))),
            helper.make_node("Unsqueeze", [name, axes], [out], name=names.fresh(out)),
        ]
    return [helper.make_node("Unsqueeze", [name], [out], axes=[0], name=names.fresh(out))]


def _finish(model: onnx.ModelProto, graph: EdgeGraph) -> EdgeGraph:
    return EdgeGraph(gs.import_onnx(model), copy.deepcopy(graph.info))


# ----- If ---------------------------------------------------------------------------------------
def _inline_branch(
    node: onnx.NodeProto, branch: onnx.GraphProto, names: _Names, model: onnx.ModelProto
) -> list[onnx.NodeProto]:
    """The nodes of ``branch`` renamed into the outer graph, writing the ``If`` node's outputs."""
    branch = copy.deepcopy(branch)
    locals_ = _local_names(branch)
    # A branch output produced by one of its own nodes is renamed straight to the If's output;
    # anything else (an outer value, a branch initializer, a value used twice) goes through Identity.
    produced = {name for inner in branch.node for name in inner.output}
    mapping: dict[str, str] = {}
    identities: list[tuple[str, str]] = []
    for out_value, if_output in zip(branch.output, node.output, strict=False):
        if not if_output:
            continue
        if out_value.name in produced and out_value.name not in mapping:
            mapping[out_value.name] = if_output
        else:
            identities.append((out_value.name, if_output))
    for name in sorted(locals_ - set(mapping)):
        mapping[name] = names.fresh(f"{name}__{node.name or 'if'}")
    _rename(branch, mapping)
    model.graph.initializer.extend(branch.initializer)
    nodes = list(branch.node)
    for inner in nodes:
        if inner.name:
            inner.name = names.fresh(f"{node.name}/{inner.name}")
    for source, target in identities:
        nodes.append(
            helper.make_node(
                "Identity", [mapping.get(source, source)], [target], name=names.fresh(f"{node.name}/{target}")
            )
        )
    return nodes


def inline_constant_ifs(model: onnx.ModelProto) -> int:
    """Inlines, in place, every main-graph ``If`` whose condition is a constant; returns how many.

    Repeats until none is left, so an ``If`` nested in an inlined branch is inlined too when its
    condition is a constant as written (conditions computed from constants need ``simplify``).
    """
    inlined = 0
    while True:
        constants = _constants(model.graph)
        names = _Names(model)
        new_nodes: list[onnx.NodeProto] = []
        changed = False
        for node in model.graph.node:
            if node.op_type == "If" and node.domain in ("", "ai.onnx") and node.input[0] in constants:
                condition = bool(np.asarray(constants[node.input[0]]).reshape(-1)[0])
                branch = next(
                    attr.g
                    for attr in node.attribute
                    if attr.name == ("then_branch" if condition else "else_branch")
                )
                new_nodes.extend(_inline_branch(node, branch, names, model))
                inlined += 1
                changed = True
            else:
                new_nodes.append(node)
        if not changed:
            return inlined
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)


@register
@dataclass(frozen=True)
class InlineConstantIf(Pass):
    """Replaces every If node whose condition is a constant by the branch it takes."""

    name: ClassVar[str] = "inline-constant-if"
    lossless: ClassVar[bool] = True
    in_place: ClassVar[bool] = False

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        if not any(node.op == "If" for node in graph.nodes):
            return PassResult(graph, changed=False, stats={"inlined": 0})
        model = graph.to_onnx()
        inlined = inline_constant_ifs(model)
        if not inlined:
            return PassResult(graph, changed=False, stats={"inlined": 0})
        return PassResult(_finish(model, graph), changed=True, stats={"inlined": inlined})


# ----- Loop -------------------------------------------------------------------------------------
def _continues_while_true(body: onnx.GraphProto, outer: dict[str, np.ndarray]) -> bool:
    """Whether the body's condition output is its condition input unchanged or a constant true."""
    cond_in, cond_out = body.input[1].name, body.output[0].name
    if cond_out == cond_in:
        return True
    known = {**outer, **_constants(body)}
    if cond_out in known:
        return bool(np.asarray(known[cond_out]).reshape(-1)[0])
    producer = next((node for node in body.node if cond_out in node.output), None)
    return producer is not None and producer.op_type == "Identity" and producer.input[0] == cond_in


def _loop_trip_count(node: onnx.NodeProto, constants: dict[str, np.ndarray], max_trips: int) -> int:
    """The number of iterations of a ``Loop`` node, or ``UnsupportedNodeError`` saying why not."""
    body = next(attr.g for attr in node.attribute if attr.name == "body")
    trip_name = node.input[0] if len(node.input) > 0 else ""
    cond_name = node.input[1] if len(node.input) > 1 else ""
    if cond_name and cond_name not in constants:
        raise UnsupportedNodeError(
            node.name,
            "Loop",
            f"its initial condition '{cond_name}' is computed at run time; only loops with a "
            "constant trip count can be unrolled",
        )
    if cond_name and not bool(np.asarray(constants[cond_name]).reshape(-1)[0]):
        return 0
    if not trip_name:
        raise UnsupportedNodeError(node.name, "Loop", "it has no trip count (a while loop); cannot unroll")
    if trip_name not in constants:
        raise UnsupportedNodeError(
            node.name,
            "Loop",
            f"its trip count '{trip_name}' is data-dependent; only loops with a constant trip count "
            "can be unrolled",
        )
    if not _continues_while_true(body, constants):
        raise UnsupportedNodeError(
            node.name,
            "Loop",
            "its body computes the continue condition from data (an early exit); only loops whose "
            "condition stays true can be unrolled",
        )
    trips = int(np.asarray(constants[trip_name]).reshape(-1)[0])
    if trips > max_trips:
        raise UnsupportedNodeError(
            node.name,
            "Loop",
            f"its trip count {trips} exceeds the unroll limit max_trips={max_trips}",
            Fix(
                "--no-simplify -p",
                f"'unroll-loops{{max_trips={trips}}},import,default'",
                "if the unrolled graph may be that large, unroll it first",
            ),
        )
    return max(trips, 0)


def _unroll_loop(
    node: onnx.NodeProto, trips: int, model: onnx.ModelProto, names: _Names, opset: int
) -> list[onnx.NodeProto]:
    """The body of ``node`` repeated ``trips`` times, writing the Loop's outputs.

    Iteration ``i`` reads ``iteration_num = i`` and ``cond = true``; loop-carried values flow from
    one copy to the next; each scan output is its per-iteration values stacked on a new axis 0.
    """
    body = next(attr.g for attr in node.attribute if attr.name == "body")
    carried = len(body.input) - 2
    scans = len(body.output) - 1 - carried
    if trips == 0 and any(node.output[carried:]):
        raise UnsupportedNodeError(
            node.name, "Loop", "it runs zero times but has scan outputs, whose shape is then unknown"
        )
    tag = node.name or "loop"
    nodes: list[onnx.NodeProto] = []
    values = list(node.input[2:])
    scan_values: list[list[str]] = [[] for _ in range(scans)]
    for iteration in range(trips):
        copy_ = copy.deepcopy(body)
        iteration_name = names.fresh(f"{tag}_iteration{iteration}")
        iteration_dims = [d.dim_value for d in body.input[0].type.tensor_type.shape.dim]
        iteration_value = np.full(iteration_dims, iteration, np.int64)
        cond_name = names.fresh(f"{tag}_cond{iteration}")
        nodes.append(
            helper.make_node("Constant", [], [iteration_name], value=numpy_helper.from_array(iteration_value))
        )
        nodes.append(
            helper.make_node("Constant", [], [cond_name], value=numpy_helper.from_array(np.array(True)))
        )
        mapping = {body.input[0].name: iteration_name, body.input[1].name: cond_name}
        mapping.update({body.input[2 + k].name: values[k] for k in range(carried)})
        for name in sorted(_local_names(body) - set(mapping)):
            mapping[name] = names.fresh(f"{name}__{tag}_{iteration}")
        _rename(copy_, mapping)
        model.graph.initializer.extend(copy_.initializer)
        for inner in copy_.node:
            inner.name = names.fresh(f"{tag}/{iteration}/{inner.name or inner.op_type}")
        nodes.extend(copy_.node)
        outputs = [value.name for value in copy_.output]
        values = outputs[1 : 1 + carried]
        for k in range(scans):
            scan_values[k].append(outputs[1 + carried + k])
    for value, target in zip(values, node.output[:carried], strict=True):
        if target:
            nodes.append(helper.make_node("Identity", [value], [target], name=names.fresh(f"{tag}/{target}")))
    for k, target in enumerate(node.output[carried:]):
        if not target:
            continue
        pieces = []
        for iteration, value in enumerate(scan_values[k]):
            piece = names.fresh(f"{target}_{iteration}")
            nodes.extend(_unsqueeze0(value, piece, opset, names))
            pieces.append(piece)
        nodes.append(
            helper.make_node("Concat", pieces, [target], axis=0, name=names.fresh(f"{tag}/{target}"))
        )
    return nodes


def unroll_loops(
    model: onnx.ModelProto, max_trips: int, ctx: PassContext, fixes: dict[str, Fix] | None = None
) -> tuple[int, list[dict[str, object]]]:
    """Unrolls, in place, the main graph's constant-trip ``Loop`` nodes (nested ones too).

    Returns how many were unrolled and, per loop, its name and trip count. A loop that cannot be
    unrolled goes to ``ctx.refuse`` (which raises unless ``edgec check`` collects refusals), with
    the fix from ``fixes`` (by node name) when the refusal has none of its own.
    """
    fixes = fixes or {}
    opset = _opset(model)
    unrolled: list[dict[str, object]] = []
    refused: set[str] = set()
    while True:
        constants = _constants(model.graph)
        names = _Names(model)
        new_nodes: list[onnx.NodeProto] = []
        changed = False
        for node in model.graph.node:
            if node.op_type != "Loop" or node.domain not in ("", "ai.onnx") or node.name in refused:
                new_nodes.append(node)
                continue
            try:
                trips = _loop_trip_count(node, constants, max_trips)
                new_nodes.extend(_unroll_loop(node, trips, model, names, opset))
            except UnsupportedNodeError as error:
                fix = error.fix or fixes.get(node.name)
                ctx.refuse(UnsupportedNodeError(error.node_name, error.op_type, error.reason, fix))
                refused.add(node.name)
                new_nodes.append(node)
                continue
            unrolled.append({"node": node.name, "trips": trips})
            changed = True
        if not changed:
            return len(unrolled), unrolled
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)


@register
@dataclass(frozen=True)
class UnrollLoops(Pass):
    """Unrolls every Loop with a constant trip count of at most max_trips into repeated bodies."""

    name: ClassVar[str] = "unroll-loops"
    lossless: ClassVar[bool] = True
    in_place: ClassVar[bool] = False
    max_trips: int = 64

    def __post_init__(self) -> None:
        if self.max_trips < 0:
            raise ValueError(f"max_trips must be non-negative, got {self.max_trips}")

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        if not any(node.op == "Loop" for node in graph.nodes):
            return PassResult(graph, changed=False, stats={"unrolled": 0})
        # What a loop's trip count and condition depend on is read on the graph, before export.
        fixes = {}
        for node in graph.nodes:
            if node.op == "Loop":
                operands = [t for t in node.inputs[:2] if t.name and not isinstance(t, gs.Constant)]
                fix = next(filter(None, map(dependency_fix, operands)), None)
                if fix is not None:
                    fixes[node.name] = fix
        model = graph.to_onnx()
        count, loops = unroll_loops(model, self.max_trips, ctx, fixes)
        if not count:
            return PassResult(graph, changed=False, stats={"unrolled": 0})
        return PassResult(_finish(model, graph), changed=True, stats={"unrolled": count, "loops": loops})
