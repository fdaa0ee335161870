"""Bias compensation for channel pruning: a removed channel's mean activation, times the weights
that read it, moves into the bias of each layer that read it.

A pruned channel stops contributing ``W[:, c] * x_c`` to the layers that consume it; when ``x_c``
is mostly its mean (a channel with small weights and a large bias is nearly constant), dropping
that constant shifts every output. Adding ``sum_c sum_k W[o, c, k] * mean(x_c)`` to the consumer's
bias keeps the expected output (exact for a constant channel, away from the zero-padded borders
of a convolution). The means are measured on the calibration samples (or the seeded random inputs
the pass's error is measured on) in the unpruned graph.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgec.ir import EdgeGraph
from edgec.passes.pruning.channel_rule import constant, replace_input
from edgec.passes.pruning.groups import CONSUMES, ChannelGroups
from edgec.passes.pruning.rules import cut_graph
from edgec.verify import run_onnx_batch

# Layers whose bias input can take the compensation (MatMul has none).
_BIASED = ("Conv", "Gemm")


def channel_means(
    graph: EdgeGraph, groups: ChannelGroups, samples: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The mean of every element along the channel axis (``channels * block`` values) of each
    tensor a Conv or Gemm consumes, over the samples and all other axes."""
    nodes = {node.name: node for node in graph.nodes}
    names = sorted(
        {use.tensor for use in groups.uses if use.role == CONSUMES and nodes[use.node].op in _BIASED}
    )
    if not names:
        return {}
    model = graph.to_onnx()
    present = {output.name for output in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    outputs = run_onnx_batch(model, samples)
    means = {}
    for name in names:
        space = groups.spaces[name]
        values = outputs[name]
        # Axis 0 is the sample axis the batch runner added.
        axes = tuple(a for a in range(values.ndim) if a != space.axis + 1)
        means[name] = values.astype(np.float64).mean(axis=axes)
    return means


def compensate(
    original: EdgeGraph,
    pruned: EdgeGraph,
    groups: ChannelGroups,
    removed: np.ndarray,
    means: dict[str, np.ndarray],
) -> int:
    """Adds each consumer's lost contribution to its bias in ``pruned``; returns how many layers."""
    nodes = {node.name: node for node in original.nodes}
    done = 0
    for use in groups.uses:
        if use.role != CONSUMES or use.tensor not in means:
            continue
        node = nodes[use.node]
        space = groups.spaces[use.tensor]
        channels = groups.removed_channels(use.tensor, removed)
        if len(channels) == 0:
            continue
        elements = (channels[:, None] * space.block + np.arange(space.block)).ravel()
        shift = _lost(node, elements, means[use.tensor][elements])
        if shift is None:
            continue
        out = node.outputs[0].name
        if out in groups.spaces:
            shift = np.delete(shift, groups.removed_channels(out, removed))
        target = pruned.node(node.name)
        if len(target.inputs) > 2 and target.inputs[2].name:
            bias = constant(target.inputs[2])
            replace_input(target, 2, (bias + shift).astype(bias.dtype), pruned)
        else:
            target.inputs.append(pruned.add_constant(f"{node.name}_bias", shift.astype(np.float32)))
        done += 1
    return done


def _lost(node, elements: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """Per output channel of ``node``: what the removed input ``elements`` contributed on average
    (``None`` for a Gemm whose bias is multiplied by ``beta = 0``)."""
    weights = constant(node.inputs[1]).astype(np.float64)
    if node.op == "Gemm":
        columns = weights[:, elements] if node.attrs.get("transB", 0) else weights[elements, :].T
        # Gemm computes alpha * A @ B + beta * C: the bias moves by alpha / beta of the loss.
        beta = float(node.attrs.get("beta", 1.0))
        return None if beta == 0 else float(node.attrs.get("alpha", 1.0)) / beta * (columns @ mean)
    group = int(node.attrs.get("group", 1))
    per_group, rows = weights.shape[1], weights.shape[0] // group
    summed = weights.reshape(weights.shape[0], per_group, -1).sum(axis=2)
    shift = np.zeros(weights.shape[0])
    for channel, value in zip(elements, mean, strict=True):
        part = channel // per_group
        shift[part * rows : (part + 1) * rows] += (
            summed[part * rows : (part + 1) * rows, channel % per_group] * value
        )
    return shift


def pruned_copy(
    graph: EdgeGraph, groups: ChannelGroups, removed: np.ndarray, means: dict[str, np.ndarray] | None = None
) -> EdgeGraph:
    """A copy of ``graph`` without the channels of the units marked in ``removed``, their mean
    contributions moved into the consumers' biases when ``means`` are given."""
    pruned = graph.copy()
    cut_graph(pruned, groups, removed)
    if means:
        compensate(graph, pruned, groups, removed, means)
    return pruned
