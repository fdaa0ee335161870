"""Trained values back into the ONNX model, BatchNormalization statistics, and accuracy checks.

Training normalizes with each batch's statistics and leaves the running statistics alone
(``DecomposeOpsForTraining``), so after training every BatchNormalization gets the population
mean and variance of its input over the training data, layer by layer in graph order (each
layer's input depends on the statistics set before it), as the model will see at inference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.train.graph import batch_reshapes
from edgec.verify import accuracy, onnx_session

# Samples used for BatchNormalization statistics (enough for stable means; bounds the time).
STATISTICS_SAMPLES = 2048
# Samples per onnxruntime call of a batched run (bounds the memory of the activations).
CHUNK = 512


def batched_model(
    graph: EdgeGraph, batch: int | str = "batch", outputs: list[str] | None = None
) -> onnx.ModelProto:
    """``graph`` (batch-1 inputs) with a batch axis of ``batch`` (a size, or a symbolic name), its
    outputs ``outputs`` (default: the graph's)."""
    work = graph.copy()
    batch_reshapes(work)
    tensors = work.tensors()
    if outputs is not None:
        work.gs.outputs = [tensors[name] for name in outputs]
    model = work.to_onnx()
    del model.graph.value_info[:]
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            if isinstance(batch, int):
                dims[0].dim_value = batch
            else:
                dims[0].dim_param = batch
    return model


def run_batched(
    graph: EdgeGraph, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Runs ``graph`` (batch-1 inputs) on all samples ``[N, 1, ...]`` at once, the batch axis made
    symbolic; returns ``outputs`` (default: the graph's) as ``[N, ...]`` arrays."""
    model = batched_model(graph, "batch", outputs)
    session = onnx_session(model, "the model with a symbolic batch (training)")
    count = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in session.output_names}
    for start in range(0, count, CHUNK):
        feeds = {
            k: np.ascontiguousarray(v[start : start + CHUNK].reshape(-1, *v.shape[2:]))
            for k, v in inputs.items()
        }
        for name, value in session.run(feeds).items():
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def write_weights(graph: EdgeGraph, values: dict[str, np.ndarray]) -> EdgeGraph:
    """A copy of ``graph`` with the initializers named in ``values`` replaced."""
    result = graph.copy()
    constants = {tensor.name: tensor for tensor in result.constants()}
    for name, value in values.items():
        tensor = constants[name]
        tensor.values = np.asarray(value, dtype=tensor.values.dtype).reshape(tensor.values.shape)
    return result


def recompute_batchnorm(graph: EdgeGraph, inputs: dict[str, np.ndarray]) -> int:
    """Sets every BatchNormalization's mean and variance to its input's statistics on ``inputs``
    (per channel, population variance), in place; returns how many were set."""
    graph.cleanup()
    norms = [node for node in graph.nodes if node.op == "BatchNormalization"]
    count = len(next(iter(inputs.values())))
    samples = {k: v[: min(count, STATISTICS_SAMPLES)] for k, v in inputs.items()}
    for node in norms:
        mean, variance = node.inputs[3], node.inputs[4]
        if not (isinstance(mean, gs.Constant) and isinstance(variance, gs.Constant)):
            continue
        activations = run_batched(graph, samples, [node.inputs[0].name])[node.inputs[0].name]
        # [samples, C, ...] -> statistics over everything but the channel axis.
        channels = np.moveaxis(activations, 1, 0).reshape(activations.shape[1], -1)
        mean.values = channels.mean(axis=1).astype(mean.values.dtype)
        variance.values = channels.var(axis=1).astype(variance.values.dtype)
    return len(norms)


def logits_of(graph: EdgeGraph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of ``graph`` under onnxruntime as ``[N, classes]``."""
    first = graph.outputs[0].name
    outputs = run_batched(graph, inputs, [first])[first]
    return outputs.reshape(len(outputs), -1)


def accuracy_of(graph: EdgeGraph, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of ``graph`` under onnxruntime."""
    return accuracy(logits_of(graph, inputs), labels)


Exporter = Callable[[dict[str, np.ndarray]], EdgeGraph]


def float_exporter(graph: EdgeGraph, sources: dict[str, str], statistics: dict[str, np.ndarray]) -> Exporter:
    """Trained parameters (by training name) → ``graph`` with those weights and BatchNormalization
    statistics recomputed on ``statistics`` (training inputs)."""

    def export(values: dict[str, np.ndarray]) -> EdgeGraph:
        result = write_weights(graph, {sources[name]: value for name, value in values.items()})
        recompute_batchnorm(result, statistics)
        return result

    return export
