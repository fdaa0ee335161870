"""The training loss as a Relax function (appended to the model by ``relax.training.AppendLoss``).

    loss = (1 - alpha) * CE(z, y) + alpha * T^2 * KL(p_t || softmax(z / T)) + beta * sum_f MSE(f_s, f_t)

``z`` are the student's logits, ``y`` the hard labels, ``p_t = softmax(z_t / T)`` the teacher's
softened probabilities (computed once, outside the graph, with ``log p_t`` beside them so that the
KL divergence needs no log of a zero probability), ``f`` the compared features. ``T^2`` keeps the
soft term's gradients on the scale of the hard term's (Hinton et al. 2015). Each term is a mean
over the batch; a term with weight 0 is left out, and so is its target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgec.errors import EdgecError


@dataclass(frozen=True)
class LossSpec:
    """Weights of the loss terms.

    Attributes:
        label_weight: weight of the cross-entropy with the hard labels.
        teacher_weight: weight of the distillation term (``alpha``).
        temperature: softening temperature ``T`` of the distillation term.
        feature_weight: weight of the feature MSE terms (``beta``).
    """

    label_weight: float = 1.0
    teacher_weight: float = 0.0
    temperature: float = 1.0
    feature_weight: float = 0.0

    def __post_init__(self) -> None:
        if min(self.label_weight, self.teacher_weight, self.feature_weight) < 0:
            raise EdgecError("loss weights must be non-negative")
        if self.label_weight == self.teacher_weight == self.feature_weight == 0:
            raise EdgecError("the loss has no term: give labels, a teacher or features")
        if self.temperature <= 0:
            raise EdgecError(f"temperature must be positive, got {self.temperature}")

    @classmethod
    def distillation(cls, alpha: float, temperature: float, feature_weight: float = 0.0) -> LossSpec:
        """``alpha * T^2 * KL + (1 - alpha) * CE`` (+ feature MSE)."""
        if not 0.0 <= alpha <= 1.0:
            raise EdgecError(f"alpha must be between 0 and 1, got {alpha}")
        return cls(1.0 - alpha, alpha, temperature, feature_weight)

    def target_names(self, features: int) -> list[str]:
        """Names of the targets the loss reads after the model's outputs, in order."""
        names = ["labels"] if self.label_weight else []
        if self.teacher_weight:
            names += ["teacher_probs", "teacher_log_probs"]
        if self.feature_weight:
            names += [f"teacher_feature_{k}" for k in range(features)]
        return names


def loss_function(spec: LossSpec, output_types: list[Any]) -> tuple[Any, list[Any]]:
    """The loss as a Relax function of ``(logits, features..., targets...)``.

    Args:
        spec: the loss terms.
        output_types: ``TensorType`` of the model's outputs (logits first, ``[B, ...]``).

    Returns:
        The function and the types of its targets (in :meth:`LossSpec.target_names` order).
    """
    from tvm import relax
    from tvm.relax.op import divide, mean, multiply, reshape, subtract, sum
    from tvm.relax.op.nn import log_softmax, nll_loss

    logits_type = output_types[0]
    dims = [int(d) for d in logits_type.shape]
    batch, classes = dims[0], int(np.prod(dims[1:]))
    flat = relax.TensorType((batch, classes), "float32")
    outputs = [relax.Var("logits", logits_type)]
    outputs += [relax.Var(f"feature_{k}", ty) for k, ty in enumerate(output_types[1:])]
    types = {"labels": relax.TensorType((batch,), "int64"), "teacher_probs": flat, "teacher_log_probs": flat}
    types.update({f"teacher_feature_{k}": ty for k, ty in enumerate(output_types[1:])})
    targets = {name: relax.Var(name, types[name]) for name in spec.target_names(len(output_types) - 1)}

    def const(value: float) -> Any:
        return relax.const(value, "float32")

    bb = relax.BlockBuilder()
    with bb.function("edgec_loss", [*outputs, *targets.values()]):
        with bb.dataflow():
            logits = bb.emit(reshape(outputs[0], (batch, classes)))
            terms = []
            if spec.label_weight:
                hard = nll_loss(log_softmax(logits), targets["labels"], reduction="mean")
                terms.append(multiply(const(spec.label_weight), hard))
            if spec.teacher_weight:
                soft = log_softmax(divide(logits, const(spec.temperature)))
                gap = subtract(targets["teacher_log_probs"], soft)
                divergence = divide(sum(multiply(targets["teacher_probs"], gap)), const(float(batch)))
                weight = spec.teacher_weight * spec.temperature**2
                terms.append(multiply(const(weight), divergence))
            if spec.feature_weight:
                for k, feature in enumerate(outputs[1:]):
                    error = subtract(feature, targets[f"teacher_feature_{k}"])
                    terms.append(multiply(const(spec.feature_weight), mean(multiply(error, error))))
            total = terms[0]
            for term in terms[1:]:
                total = bb.emit(relax.op.add(total, term))
            loss = bb.emit_output(total)
        bb.emit_func_output(loss)
    return bb.get()["edgec_loss"], [types[name] for name in targets]
