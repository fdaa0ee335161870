"""The ``qat`` pass: quantize (calibrated as ``quantize`` does), then fine-tune the quantized model.

``qat{scheme=weight-int4,epochs=10}`` runs ``quantize`` through the pass manager (BatchNorm folded,
calibration on ``--calib``), then trains the result with fake quantization (straight-through
estimator, learned scales, :mod:`edgec.train.qat`) against the float model as the teacher
(``alpha * T^2 * KL + (1 - alpha) * CE``; ``alpha = 1`` without labels) on ``--train`` data,
and writes the learned integer weights, scales and biases back into the same QDQ graph. The
lowering then builds exactly that graph: there is no second calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from edgec.data import LABEL_KEY, as_arrays
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import Pass, PassContext, PassResult, get_pass, register

# Weight bits of each scheme QAT trains.
SCHEME_BITS = {"int8": 8, "weight-int8": 8, "weight-int4": 4, "weight-int2": 2, "weight-binary": 1}
# AdamW rates that fine-tune each weight width (learning_rate=0 picks them): 4 and 8 bits stay
# close to the float weights; 2-bit and binary weights must move across rounding boundaries
# (digits binary: 84 % validation accuracy after 30 epochs at 1e-4, 96 % after 15 at 1e-3).
FINE_TUNING_RATES = {8: 1e-4, 4: 1e-4, 2: 1e-3, 1: 1e-3}
# Quantization scales learn at this fraction of the weights' rate (they are small numbers whose
# relative change matters; Adam's steps are absolute).
SCALE_RATE = 0.1


@register
@dataclass(frozen=True)
class QuantizationAwareTraining(Pass):
    """Quantizes like the quantize pass, then fine-tunes the quantized model with fake quantization."""

    name: ClassVar[str] = "qat"
    lossless: ClassVar[bool] = False
    in_place: ClassVar[bool] = False
    scheme: Literal["int8", "weight-int8", "weight-int4", "weight-int2", "weight-binary"] = "int8"
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.0
    alpha: float = 0.7
    temperature: float = 4.0
    patience: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEME_BITS:
            raise EdgecError(
                f"qat trains schemes {', '.join(SCHEME_BITS)}, not '{self.scheme}' (int8-dynamic and fp16 "
                "have no trained integer weights)"
            )

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        from edgec.train.distill import check_pair, teacher_outputs
        from edgec.train.engine import Targets, TrainConfig, train
        from edgec.train.graph import training_graph
        from edgec.train.losses import LossSpec
        from edgec.train.qat import qdq_exporter, trainable_qdq

        data = _training_data(ctx, graph, self.alpha)
        config = TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate or default_rate(self.scheme),
            weight_decay=0.0,
            patience=self.patience,
            seed=ctx.seed,
        )
        folded = ctx.run_pass(get_pass("fuse-conv-bn")(), graph.copy()).graph
        quantized = ctx.run_pass(
            get_pass("quantize")(scheme=self.scheme, calibration=self.calibration), folded
        )
        ptq = quantized.graph
        trainable = trainable_qdq(ptq, _layer_weights(folded), SCHEME_BITS[self.scheme])
        check_pair(graph, ptq)
        inputs = {t.name: data[t.name] for t in graph.inputs}
        labels = data.get(LABEL_KEY)
        alpha = self.alpha if labels is not None else 1.0
        training = training_graph(trainable.graph, self.batch_size)
        names = {source: name for name, source in training.sources.items()}
        result = train(
            training,
            inputs,
            Targets(labels, teacher_outputs(graph, inputs, ())[0]),
            LossSpec.distillation(alpha, self.temperature),
            config,
            qdq_exporter(ptq, trainable, training.sources),
            as_arrays(ctx.evaluation),
            quantized={names[scale]: spec for scale, spec in trainable.specs.items() if scale in names},
            rate_multipliers={names[n]: SCALE_RATE for n in _scale_names(trainable.graph) if n in names},
            progress=ctx.progress,
            warn=ctx.warn,
        )
        stats: dict[str, Any] = {
            "scheme": self.scheme,
            "ptq": {k: v for k, v in quantized.stats.items() if k in ("accuracy", "error", "precision")},
            "training": result.stats(),
            "alpha": alpha,
            "trained_scales": len(_scale_names(ptq)),
        }
        return PassResult(result.graph, changed=True, stats=stats)


def default_rate(scheme: str) -> float:
    """The learning rate ``qat`` uses for ``scheme`` when none is given."""
    return FINE_TUNING_RATES[SCHEME_BITS[scheme]]


def _training_data(ctx: PassContext, graph: EdgeGraph, alpha: float) -> dict[str, np.ndarray]:
    if ctx.training is None:
        raise EdgecError("quantization-aware training needs training data: pass --train train.npz")
    if ctx.calibration is None:
        raise EdgecError("quantization-aware training starts from a calibrated model: pass --calib calib.npz")
    if LABEL_KEY not in ctx.training and alpha < 1.0:
        ctx.warn("the training data has no labels: qat learns from the float model's outputs alone (alpha=1)")
    return ctx.training


def _layer_weights(graph: EdgeGraph) -> dict[str, np.ndarray]:
    """The float weight of every Conv/Gemm/MatMul with a constant weight, by node name."""
    import onnx_graphsurgeon as gs

    weights = {}
    for node in graph.nodes:
        if node.op in ("Conv", "Gemm", "MatMul") and len(node.inputs) > 1:
            weight = node.inputs[1]
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            if isinstance(weight, gs.Constant) and weight.values.dtype == np.float32:
                weights[node.name] = weight.values * alpha
    return weights


def _scale_names(graph: EdgeGraph) -> set[str]:
    return {n.inputs[1].name for n in graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")}
