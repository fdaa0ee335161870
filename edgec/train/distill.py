"""Knowledge distillation: train a student on a teacher's softened outputs (and the labels).

The teacher runs once over the training data under onnxruntime; its logits (and the features a
feature loss compares) are cached per process, keyed by the teacher's and the data's bytes, so
several students or seeds distilled from one teacher pay for it once. Without labels the student
learns from the teacher alone (``alpha = 1``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from edgec.data import LABEL_KEY
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape
from edgec.train.engine import Targets, TrainConfig, TrainResult, train
from edgec.train.export import float_exporter, run_batched
from edgec.train.graph import batch_axis_check, training_graph
from edgec.train.losses import LossSpec

_TEACHER_CACHE: dict[str, list[np.ndarray]] = {}
# Cached teacher outputs kept per process (oldest dropped first).
_CACHE_ENTRIES = 8


def check_pair(teacher: EdgeGraph, student: EdgeGraph) -> None:
    """Raises unless teacher and student read the same inputs and give outputs of one shape."""
    batch_axis_check(student)
    teacher_inputs = {t.name: static_shape(t) for t in teacher.inputs}
    for tensor in student.inputs:
        if teacher_inputs.get(tensor.name) != static_shape(tensor):
            raise EdgecError(
                f"teacher and student inputs differ: the student reads '{tensor.name}' "
                f"{list(static_shape(tensor) or [])}, the teacher reads {teacher_inputs}; "
                "both must take the same inputs"
            )
    teacher_out, student_out = static_shape(teacher.outputs[0]), static_shape(student.outputs[0])
    if teacher_out is None or teacher_out != student_out:
        raise EdgecError(
            f"teacher output '{teacher.outputs[0].name}' has shape {list(teacher_out or [])} but student "
            f"output '{student.outputs[0].name}' has {list(student_out or [])}; distillation needs the same "
            "classes in the same order"
        )


def teacher_outputs(
    teacher: EdgeGraph, inputs: dict[str, np.ndarray], features: tuple[str, ...]
) -> list[np.ndarray]:
    """The teacher's logits ``[N, classes]`` and ``features`` (``[N, ...]``) over ``inputs``."""
    tensors = teacher.tensors()
    missing = [name for name in features if name not in tensors]
    if missing:
        raise EdgecError(f"the teacher has no tensor {missing} to compare the student's features with")
    names = [teacher.outputs[0].name, *features]
    digest = hashlib.sha256(teacher.to_onnx().SerializeToString() + repr(names).encode())
    for name in sorted(inputs):
        digest.update(name.encode() + np.ascontiguousarray(inputs[name]).tobytes())
    key = digest.hexdigest()
    if key not in _TEACHER_CACHE:
        outputs = run_batched(teacher, {t.name: inputs[t.name] for t in teacher.inputs}, names)
        ordered = [outputs[name] for name in names]
        ordered[0] = ordered[0].reshape(len(ordered[0]), -1)
        if len(_TEACHER_CACHE) >= _CACHE_ENTRIES:
            _TEACHER_CACHE.pop(next(iter(_TEACHER_CACHE)))
        _TEACHER_CACHE[key] = ordered
    return _TEACHER_CACHE[key]


def distill(
    student: EdgeGraph,
    teacher: EdgeGraph,
    data: dict[str, np.ndarray],
    config: TrainConfig,
    alpha: float = 0.7,
    temperature: float = 4.0,
    features: tuple[str, ...] = (),
    feature_weight: float = 1.0,
    evaluation: dict[str, np.ndarray] | None = None,
    progress: Callable[[str, int], Callable[..., None]] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> TrainResult:
    """Trains ``student`` with ``alpha * T^2 * KL + (1 - alpha) * CE`` against ``teacher``.

    Args:
        data: the training inputs by the models' input names (``[N, 1, ...]``), ``label``
            optional (then ``alpha`` must be 1).
        features: tensors present in both models (same shapes) compared by an MSE term.
        evaluation: labelled data measured after each epoch (the best checkpoint is kept).
    """
    check_pair(teacher, student)
    inputs = {t.name: data[t.name] for t in student.inputs}
    labels = data.get(LABEL_KEY)
    if labels is None and alpha < 1.0:
        raise EdgecError(
            f"the training data has no '{LABEL_KEY}' array; pass --alpha 1 to learn from the teacher's "
            "soft labels alone, or add labels"
        )
    spec = LossSpec.distillation(alpha, temperature, feature_weight if features else 0.0)
    outputs = teacher_outputs(teacher, inputs, features)
    targets = Targets(labels, outputs[0], outputs[1:])
    return _train_float(student, inputs, targets, spec, config, evaluation, progress, warn, features)


def fit(
    model: EdgeGraph,
    data: dict[str, np.ndarray],
    config: TrainConfig,
    evaluation: dict[str, np.ndarray] | None = None,
    progress: Callable[[str, int], Callable[..., None]] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> TrainResult:
    """Trains ``model`` on hard labels alone (cross-entropy): the baseline distillation beats."""
    if LABEL_KEY not in data:
        raise EdgecError(f"training on labels needs a '{LABEL_KEY}' array in the training data")
    inputs = {t.name: data[t.name] for t in model.inputs}
    targets = Targets(data[LABEL_KEY])
    return _train_float(model, inputs, targets, LossSpec(), config, evaluation, progress, warn)


def _train_float(
    model: EdgeGraph,
    inputs: dict[str, np.ndarray],
    targets: Targets,
    spec: LossSpec,
    config: TrainConfig,
    evaluation: dict[str, np.ndarray] | None,
    progress: Callable[[str, int], Callable[..., None]] | None,
    warn: Callable[[str], None],
    features: tuple[str, ...] = (),
) -> TrainResult:
    """Trains a float model's weights; exports them with recomputed BatchNorm statistics."""
    graph = training_graph(model, config.batch_size, features)
    return train(
        graph,
        inputs,
        targets,
        spec,
        config,
        float_exporter(model, graph.sources, inputs),
        evaluation,
        weight_decays=_weight_decays(model, graph.sources, config.weight_decay),
        progress=progress,
        warn=warn,
    )


def _weight_decays(model: EdgeGraph, sources: dict[str, str], decay: float) -> dict[str, float]:
    """Weight decay for the weights of Conv/Gemm/MatMul only (not biases or normalization)."""
    weights = {
        node.inputs[1].name for node in model.nodes if node.op in ("Conv", "Gemm", "ConvTranspose")
    } | {t.name for node in model.nodes if node.op == "MatMul" for t in node.inputs}
    return {name: decay for name, source in sources.items() if source in weights}
