"""The table of channel rules, and the two drivers: linking a graph's channels (the analysis) and
cutting removed channels out of a graph (the rewrite)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, infer_shapes, static_shape
from edgec.passes.pruning.channel_rule import ChannelRule, Cut, Cuts, fix_inputs
from edgec.passes.pruning.elementwise import ELEMENTWISE_RULES
from edgec.passes.pruning.groups import ChannelGroups, Linker
from edgec.passes.pruning.layers import LAYER_RULES
from edgec.passes.pruning.reshaping import RESHAPING_RULES

RULES: dict[str, ChannelRule] = {
    op: rule for rule in (*LAYER_RULES, *ELEMENTWISE_RULES, *RESHAPING_RULES) for op in rule.ops
}


def link_graph(graph: EdgeGraph) -> Linker:
    """Runs every node's rule in topological order; fixes what must keep its channels: unknown ops'
    inputs, model outputs and tensors read inside subgraphs."""
    linker = Linker(graph)
    graph.gs.toposort()
    for node in graph.nodes:
        if all(isinstance(t, gs.Constant) or not t.name for t in node.inputs):
            continue  # computed from constants only
        rule = RULES.get(node.op)
        if rule is None:
            fix_inputs(node, linker, "is an op the channel analysis does not see through")
        else:
            rule.link(node, linker)
    for tensor in graph.outputs:
        space = linker.space(tensor)
        if space is not None:
            linker.fix(space, f"'{tensor.name}' is a model output (its shape stays)")
    main = {id(node) for node in graph.nodes}
    tensors = graph.tensors()
    for name, space in linker.spaces.items():
        if name in tensors and any(id(consumer) not in main for consumer in tensors[name].outputs):
            linker.fix(space, f"'{name}' is read inside a subgraph")
    return linker


def cut_graph(graph: EdgeGraph, groups: ChannelGroups, removed: np.ndarray) -> int:
    """Removes the channels of the units marked in ``removed`` (a boolean per unit) from ``graph``
    (in place; it must have the tensor and node names the analysis saw) and infers the new
    shapes. Returns the number of nodes rewritten.

    Raises:
        EdgecError: if a model output changed shape (a bug in a rule: outputs are fixed).
    """
    cuts: dict[str, Cut] = {}
    for name, space in groups.spaces.items():
        channels = groups.removed_channels(name, removed)
        if len(channels):
            cuts[name] = Cut(space, channels)
    table = Cuts(cuts)
    graph.gs.toposort()
    touched = [node for node in graph.nodes if table.touches(node)]
    for node in touched:
        rule = RULES.get(node.op)
        if rule is not None:
            rule.cut(node, table, graph)
    outputs = {t.name: static_shape(t) for t in graph.outputs}
    inputs = {id(t) for t in graph.inputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in inputs:
            tensor.shape = None
    graph.cleanup()
    infer_shapes(graph)
    for tensor in graph.outputs:
        if outputs[tensor.name] is not None and static_shape(tensor) != outputs[tensor.name]:
            raise EdgecError(
                f"channel pruning changed model output '{tensor.name}' from {list(outputs[tensor.name])} "
                f"to {tensor.shape}; this is a bug in a channel rule"
            )
    return len(touched)


def weight_rows(node: gs.Node) -> np.ndarray | None:
    """A producing layer's weights, one row per output channel (``None`` for other ops)."""
    rule = RULES.get(node.op)
    return rule.rows(node) if rule is not None else None
