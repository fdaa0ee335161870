"""The training loop: seeded minibatches, a cosine learning rate, evaluation after every epoch,
early stopping, the best checkpoint, and a stop on a NaN loss that keeps that checkpoint.

Accuracy is always measured on the exported ONNX model under onnxruntime (weights written back,
BatchNormalization statistics recomputed), so the accuracy reported is the accuracy of the model
that is handed on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.train.export import Exporter, logits_of
from edgec.train.fake_quant import FakeQuantSpec
from edgec.train.graph import TrainingGraph
from edgec.train.losses import LossSpec
from edgec.verify import accuracy


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training data.
        batch_size: samples per step (fixed at import; the last partial batch of an epoch is
            dropped, a different one each epoch).
        learning_rate: peak AdamW rate (cosine decay to 0 over all steps, after ``warmup`` steps).
        weight_decay: decoupled weight decay of Conv/Gemm/MatMul weights.
        patience: stop after this many epochs without a better evaluation (0: never).
        warmup: steps of linear warm-up.
        seed: seed of the minibatch order.
        schedules: compile with edgec's CPU schedules (``False``: TVM's untuned kernels).
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 0
    warmup: int = 0
    seed: int = 0
    schedules: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise EdgecError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise EdgecError(f"batch size must be at least 2 (batch statistics), got {self.batch_size}")
        if not self.learning_rate > 0:
            raise EdgecError(f"learning rate must be positive, got {self.learning_rate}")


@dataclass
class Targets:
    """What the loss compares the model's outputs with, one row per training sample."""

    labels: np.ndarray | None = None
    teacher_logits: np.ndarray | None = None
    teacher_features: list[np.ndarray] = field(default_factory=list)

    def arrays(self, spec: LossSpec, names: list[str]) -> dict[str, np.ndarray]:
        """The loss targets by name (teacher probabilities softened by the temperature)."""
        arrays: dict[str, np.ndarray] = {}
        if "labels" in names:
            arrays["labels"] = np.asarray(self.labels, np.int64)
        if "teacher_probs" in names:
            scaled = self.teacher_logits.astype(np.float64) / spec.temperature
            log_probs = scaled - scaled.max(axis=1, keepdims=True)
            log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
            arrays["teacher_probs"] = np.exp(log_probs).astype(np.float32)
            arrays["teacher_log_probs"] = log_probs.astype(np.float32)
        for k, feature in enumerate(self.teacher_features):
            if f"teacher_feature_{k}" in names:
                arrays[f"teacher_feature_{k}"] = feature.astype(np.float32)
        return arrays


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    accuracy: float | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": round(self.loss, 6),
            "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
        }


@dataclass
class TrainResult:
    """The model with the best checkpoint's weights, and how training went.

    ``stopped`` is ``completed``, ``early stop`` or ``nan loss``; ``best_epoch`` 0 means the
    starting weights were never beaten. ``accuracy`` is the best checkpoint's accuracy on the
    evaluation data (``None`` without it), measured on ``graph`` under onnxruntime.
    """

    graph: EdgeGraph
    history: list[EpochRecord]
    best_epoch: int
    accuracy: float | None
    initial_accuracy: float | None
    stopped: str
    steps: int
    seconds_per_step: float
    kernels: dict[str, int]

    def stats(self) -> dict[str, Any]:
        """JSON statistics for a pass record or a report."""
        return {
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
            "accuracy_before": None if self.initial_accuracy is None else round(self.initial_accuracy, 6),
            "stopped": self.stopped,
            "steps": self.steps,
            "history": [record.as_dict() for record in self.history],
            "kernels": self.kernels,
        }


def check_samples(inputs: dict[str, np.ndarray], batch_size: int) -> int:
    count = len(next(iter(inputs.values())))
    if count < batch_size:
        raise EdgecError(
            f"the training data holds {count} samples, fewer than one batch of {batch_size}; "
            "add data or lower the batch size (--batch-size)"
        )
    return count


def train(
    graph: TrainingGraph,
    inputs: dict[str, np.ndarray],
    targets: Targets,
    loss: LossSpec,
    config: TrainConfig,
    export: Exporter,
    evaluation: dict[str, np.ndarray] | None = None,
    quantized: dict[str, FakeQuantSpec] | None = None,
    rate_multipliers: dict[str, float] | None = None,
    weight_decays: dict[str, float] | None = None,
    progress: Callable[[str, int], Callable[..., None]] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> TrainResult:
    """Trains ``graph`` on ``inputs`` (``[N, 1, ...]`` per input) and returns the best checkpoint
    exported by ``export``.

    Args:
        evaluation: labelled data (the model's input names and ``label``) measured after every
            epoch; the checkpoint with the best accuracy is kept. Without it, the checkpoint with
            the lowest epoch loss is kept.
    """
    from edgec.train.compiler import compile_step
    from edgec.train.optimizer import cosine_rate

    count = check_samples(inputs, config.batch_size)
    step = compile_step(
        graph, loss, quantized or {}, rate_multipliers or {}, weight_decays or {}, config.schedules
    )
    target_arrays = targets.arrays(loss, step.targets)
    ordered_targets = [target_arrays[name] for name in step.targets]
    eval_inputs = {name: evaluation[name] for name in graph.inputs} if evaluation is not None else {}
    eval_labels = np.asarray(evaluation["label"]) if evaluation is not None else None
    rng = np.random.default_rng(config.seed)
    per_epoch = count // config.batch_size
    total = per_epoch * config.epochs
    advance = (progress or (lambda description, total: lambda done, status="": None))("training", total)

    def measure(values: dict[str, np.ndarray]) -> tuple[EdgeGraph, float | None]:
        model = export(values)
        if eval_labels is None:
            return model, None
        return model, accuracy(logits_of(model, eval_inputs), eval_labels)

    best_values = step.values()
    best_graph, best_accuracy = measure(best_values)
    initial_accuracy = best_accuracy
    best_epoch, best_loss = 0, math.inf
    history: list[EpochRecord] = []
    stopped, steps, step_seconds, since_best = "completed", 0, 0.0, 0
    status = "" if best_accuracy is None else f"accuracy {best_accuracy:.4f}"
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(count)
        losses = []
        for index in range(per_epoch):
            rows = order[index * config.batch_size : (index + 1) * config.batch_size]
            batch = [_batch(inputs[name], rows) for name in graph.inputs]
            rate = cosine_rate(config.learning_rate, steps, total, config.warmup)
            tick = time.perf_counter()
            value = step.step(batch, [t[rows] for t in ordered_targets], rate)
            step_seconds += time.perf_counter() - tick
            steps += 1
            if not math.isfinite(value):
                stopped = "nan loss"
                break
            losses.append(value)
            advance(1, f"epoch {epoch}/{config.epochs} loss {np.mean(losses):.4f} {status}")
        if stopped == "nan loss":
            warn(
                f"training stopped at epoch {epoch}, step {index + 1}: the loss became "
                f"{value}; kept the best checkpoint (epoch {best_epoch}"
                + ("" if best_accuracy is None else f", accuracy {best_accuracy:.4f}")
                + "); try a lower learning rate"
            )
            break
        values = step.values()
        model, score = measure(values)
        epoch_loss = float(np.mean(losses))
        history.append(EpochRecord(epoch, epoch_loss, score, time.perf_counter() - start))
        better = score > best_accuracy if score is not None else epoch_loss < best_loss
        if better or (epoch == 1 and score is None):
            best_values, best_graph, best_epoch = values, model, epoch
            best_accuracy, best_loss, since_best = score, epoch_loss, 0
        else:
            since_best += 1
        if score is not None:
            status = f"accuracy {score:.4f} (best {best_accuracy:.4f})"
        if config.patience and since_best >= config.patience:
            stopped = "early stop"
            break
    advance(total - steps)
    step.load(best_values)
    return TrainResult(
        best_graph,
        history,
        best_epoch,
        best_accuracy,
        initial_accuracy,
        stopped,
        steps,
        step_seconds / max(steps, 1),
        {"compiled": step.kernels, "scheduled": step.scheduled},
    )


def _batch(samples: np.ndarray, rows: np.ndarray) -> np.ndarray:
    # Samples are [N, 1, ...] (batch-1 inputs): the batch is their concatenation on axis 1.
    return np.ascontiguousarray(samples[rows].reshape(len(rows), *samples.shape[2:]))
