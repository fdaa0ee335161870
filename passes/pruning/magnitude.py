"""Unstructured pruning: ``prune-magnitude`` sets the smallest weights to zero (per layer or over
the whole model) and ``prune-nm`` keeps the ``n`` largest of every ``m`` consecutive weights along
the reduction axis (the input channels a multiply-accumulate sums over), the N:M pattern that
sparse kernels skip in fixed steps. Shapes do not change; the zeros are what a sparse weight
format stores compactly."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.passes.common import Evaluator, error_samples
from edgec.passes.pruning.channel_rule import constant
from edgec.pm import Pass, PassContext, PassResult, register

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def reduction_axis(node: gs.Node, weights: np.ndarray) -> int:
    """The axis of a layer's weights that its multiply-accumulates sum over: a Conv's input
    channels, a ConvTranspose's input channels (axis 0), Gemm's ``K`` (axis 1 with ``transB``),
    MatMul's ``K`` (the second-to-last axis)."""
    if node.op == "Conv":
        return 1
    if node.op == "ConvTranspose":
        return 0
    if node.op == "Gemm":
        return 1 if node.attrs.get("transB", 0) else 0
    return weights.ndim - 2


@dataclass(frozen=True)
class Layer:
    """A layer whose constant weight (input 1) unstructured pruning may zero."""

    node: gs.Node
    weights: np.ndarray


def weighted_layers(graph: EdgeGraph, skip: tuple[str, ...]) -> tuple[list[Layer], list[dict[str, str]]]:
    """The layers with constant float weights, and those left alone with the reason; a weight shared
    by several layers is pruned once (with the first).

    Raises:
        EdgecError: for a skip pattern that names no node.
    """
    for pattern in skip:
        if not any(fnmatch.fnmatchcase(node.name, pattern) for node in graph.nodes):
            raise EdgecError(f"skip pattern '{pattern}' names no node of the model")
    layers, left, seen = [], [], set()
    for node in graph.nodes:
        if node.op not in WEIGHTED_OPS or len(node.inputs) < 2:
            continue
        weights = constant(node.inputs[1])
        if any(fnmatch.fnmatchcase(node.name, pattern) for pattern in skip):
            reason = "skipped (skip option)"
        elif weights is None:
            reason = "its weight is computed (prune before quantizing)"
        elif weights.dtype.kind != "f" or weights.ndim < 2:
            reason = f"its weight is {weights.dtype}[{','.join(map(str, weights.shape))}], not a float matrix"
        elif node.inputs[1].name in seen:
            continue
        else:
            seen.add(node.inputs[1].name)
            layers.append(Layer(node, weights))
            continue
        left.append({"node": node.name, "op": node.op, "reason": reason})
    return layers, left


def sparsity(values: np.ndarray) -> float:
    return float(np.mean(values == 0)) if values.size else 0.0


def magnitude_masks(layers: list[Layer], target: float, scope: str) -> list[np.ndarray]:
    """Boolean masks of the weights to keep: the ``target`` fraction of smallest magnitudes goes,
    per layer or ranked over every layer together (ties broken by position)."""
    if scope == "layer":
        return [_keep_largest(layer.weights.ravel(), target).reshape(layer.weights.shape) for layer in layers]
    flat = np.concatenate([np.abs(layer.weights).ravel() for layer in layers])
    keep = _keep_largest(flat, target)
    masks, start = [], 0
    for layer in layers:
        size = layer.weights.size
        masks.append(keep[start : start + size].reshape(layer.weights.shape))
        start += size
    return masks


def _keep_largest(values: np.ndarray, target: float) -> np.ndarray:
    drop = math.floor(target * values.size + 0.5)
    keep = np.ones(values.size, bool)
    if drop:
        keep[np.argpartition(np.abs(values), drop - 1)[:drop]] = False
    return keep


def nm_mask(weights: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keeps the ``n`` largest magnitudes of every ``m`` consecutive weights along ``axis``."""
    moved = np.moveaxis(np.abs(weights), axis, -1)
    blocks = moved.reshape(-1, m)
    order = np.argsort(-blocks, axis=1, kind="stable")
    keep = np.zeros_like(blocks, dtype=bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def apply_masks(graph: EdgeGraph, layers: list[Layer], masks: list[np.ndarray], pattern: str) -> list[dict]:
    """Zeros the weights outside each mask in ``graph`` (a copy with the same node names); returns
    the per-layer records (sparsity before and after)."""
    nodes = {node.name: node for node in graph.nodes}
    rows = []
    for layer, mask in zip(layers, masks, strict=True):
        pruned = np.where(mask, layer.weights, 0).astype(layer.weights.dtype)
        before, after = sparsity(layer.weights), sparsity(pruned)
        if after > before:
            old = nodes[layer.node.name].inputs[1]
            new = graph.add_constant(old.name, pruned)
            # Every reader of a shared weight gets the pruned tensor.
            for reader in list(old.outputs):
                for index, tensor in enumerate(list(reader.inputs)):
                    if tensor is old:
                        reader.inputs[index] = new
        row = {"node": layer.node.name, "op": layer.node.op, "params": int(layer.weights.size)}
        row.update(sparsity=[round(before, 4), round(after, 4)], pattern=pattern)
        rows.append(row)
    return rows


def _finish(
    graph: EdgeGraph, ctx: PassContext, pruned: EdgeGraph, rows: list[dict], left: list
) -> PassResult:
    total = sum(row["params"] for row in rows)
    zeros = [sum(row["params"] * row["sparsity"][i] for row in rows) for i in (0, 1)]
    stats: dict[str, Any] = {
        "layers": rows,
        "left_alone": left,
        "params": total,
        "sparsity": [round(z / total, 4) if total else 0.0 for z in zeros],
    }
    changed = any(row["sparsity"][1] > row["sparsity"][0] for row in rows)
    if not changed:
        return PassResult(graph, changed=False, stats=stats)
    samples, stats["error_data"] = error_samples(graph, ctx)
    stats.update(Evaluator(graph, samples, ctx.evaluation, labels=("original", "pruned")).measure(pruned))
    return PassResult(pruned, changed=True, stats=stats)


@register
@dataclass(frozen=True)
class PruneMagnitude(Pass):
    """Sets the smallest-magnitude weights of Conv, Gemm and MatMul layers to zero (unstructured sparsity)."""

    name: ClassVar[str] = "prune-magnitude"
    lossless: ClassVar[bool] = False
    in_place: ClassVar[bool] = False
    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise EdgecError(f"prune-magnitude sparsity {self.sparsity} must be in [0, 1): 0.8 zeros 80%")
        if self.scope not in ("layer", "global"):
            raise EdgecError(f"unknown scope '{self.scope}'; choose layer or global")

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        layers, left = weighted_layers(graph, self.skip)
        masks = magnitude_masks(layers, self.sparsity, self.scope)
        pruned = graph.copy()
        rows = apply_masks(pruned, layers, masks, "unstructured")
        return _finish(graph, ctx, pruned, rows, left)


@register
@dataclass(frozen=True)
class PruneNM(Pass):
    """Keeps the n largest of every m consecutive weights along each layer's reduction axis (N:M sparsity)."""

    name: ClassVar[str] = "prune-nm"
    lossless: ClassVar[bool] = False
    in_place: ClassVar[bool] = False
    n: int = 2
    m: int = 4
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise EdgecError(
                f"prune-nm needs 0 < n < m (2:4 keeps 2 of every 4 weights), got {self.n}:{self.m}"
            )

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        layers, left = weighted_layers(graph, self.skip)
        kept, masks = [], []
        for layer in layers:
            axis = reduction_axis(layer.node, layer.weights)
            size = layer.weights.shape[axis]
            if size % self.m:
                reason = f"its reduction axis has {size} weights, not a multiple of {self.m}"
                left.append({"node": layer.node.name, "op": layer.node.op, "reason": reason})
                continue
            kept.append(layer)
            masks.append(nm_mask(layer.weights, axis, self.n, self.m))
        pruned = graph.copy()
        rows = apply_masks(pruned, kept, masks, f"{self.n}:{self.m}")
        return _finish(graph, ctx, pruned, rows, left)
