"""The ``distill`` pass: knowledge distillation as a pre-pass or as recovery after compression.

``distill{teacher=big.onnx,epochs=20}`` trains the graph (the student) to imitate the teacher on
``--train`` data; ``distill{}`` without a teacher takes the model as loaded, before any pass, so
that ``substitute-depthwise-separable,distill{}`` or ``prune-...,distill{}`` recovers what the
compression lost. Loss ``alpha * T^2 * KL + (1 - alpha) * CE`` (``alpha = 1`` without labels);
the best checkpoint on ``--eval`` is kept (:mod:`edgec.train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgec.data import LABEL_KEY, as_arrays
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, infer_shapes, load
from edgec.pm import Pass, PassContext, PassResult, register


@register
@dataclass(frozen=True)
class Distill(Pass):
    """Trains the graph to imitate a teacher model (by default the model as loaded) on the training data."""

    name: ClassVar[str] = "distill"
    lossless: ClassVar[bool] = False
    in_place: ClassVar[bool] = False
    teacher: str = ""
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 0
    features: tuple[str, ...] = ()
    feature_weight: float = 1.0

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        from edgec.train.distill import distill
        from edgec.train.engine import TrainConfig

        if ctx.training is None:
            raise EdgecError("distill needs training data: pass --train train.npz")
        teacher = self._teacher(ctx)
        alpha = self.alpha
        if LABEL_KEY not in ctx.training and alpha < 1.0:
            ctx.warn("the training data has no labels: distill learns from the teacher alone (alpha=1)")
            alpha = 1.0
        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
            seed=ctx.seed,
        )
        result = distill(
            graph,
            teacher,
            ctx.training,
            config,
            alpha=alpha,
            temperature=self.temperature,
            features=self.features,
            feature_weight=self.feature_weight,
            evaluation=as_arrays(ctx.evaluation),
            progress=ctx.progress,
            warn=ctx.warn,
        )
        stats = {"teacher": self.teacher or "the model as loaded", "alpha": alpha, **result.stats()}
        return PassResult(result.graph, changed=True, stats=stats)

    def _teacher(self, ctx: PassContext) -> EdgeGraph:
        if self.teacher:
            teacher = load(self.teacher)
            infer_shapes(teacher)
            return teacher
        if ctx.reference is None:
            raise EdgecError(
                "distill{} without a teacher learns from the model as loaded, which this run does not "
                "have; name one: distill{teacher=model.onnx}"
            )
        return ctx.reference
