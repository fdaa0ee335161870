"""``substitute-activation``: smooth activations become their piecewise-linear "hard" forms.

    Sigmoid(x)          -> HardSigmoid(x) = clip(x / 6 + 1/2, 0, 1)
    x * Sigmoid(x)      -> HardSwish(x)   = x * clip(x / 6 + 1/2, 0, 1)         (Swish / SiLU)
    Gelu(x), x * Phi(x) -> x * clip(1.702 x / 6 + 1/2, 0, 1)                   (GELU ~ x sigmoid(1.702 x))

(Howard et al. 2019, MobileNetV3): no exponential, no division; integer kernels can compute them.
The erf form of GELU that exporters write, ``0.5 * x * (1 + erf(x / sqrt 2))``, is matched too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.substitution.common import SubstitutionPass
from edgec.pm import register
from edgec.rewrite import Const, Match, Op, Rule, RuleSet, Var

HARD_SLOPE = 1.0 / 6.0
GELU_SIGMOID_SCALE = 1.702


def _hard_sigmoid(
    graph: EdgeGraph, x: gs.Tensor, slope: float, out: gs.Tensor | None = None
) -> tuple[gs.Node, gs.Tensor]:
    output = out if out is not None else gs.Variable(graph.fresh_name("hard_sigmoid"), dtype=np.float32)
    node = gs.Node(
        "HardSigmoid", graph.fresh_name("hard_sigmoid"), {"alpha": slope, "beta": 0.5}, [x], [output]
    )
    return node, output


def _sigmoid(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    node, _ = _hard_sigmoid(graph, match["x"], HARD_SLOPE, match.outputs[0])
    node.name = match["act"].name
    return [node]


def _swish(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    return [gs.Node("HardSwish", match["mul"].name, {}, [match["x"]], match.outputs)]


def _hard_gate_check(match: Match, graph: EdgeGraph) -> str | None:
    gate = match["gate"]
    if (
        not math.isclose(gate.attrs.get("alpha", 0.2), HARD_SLOPE, rel_tol=1e-6)
        or gate.attrs.get("beta", 0.5) != 0.5
    ):
        return "the HardSigmoid is not clip(x / 6 + 1/2, 0, 1)"
    return None


def _gelu(match: Match, graph: EdgeGraph) -> list[gs.Node]:
    gate, gated = _hard_sigmoid(graph, match["x"], GELU_SIGMOID_SCALE * HARD_SLOPE)
    root = match.root
    return [gate, gs.Node("Mul", root.name, {}, [match["x"], gated], match.outputs)]


def _constant_is(name: str, value: float):
    def check(match: Match, graph: EdgeGraph) -> str | None:
        values = np.asarray(match.const(name), np.float64)
        if values.size != 1 or not math.isclose(float(values.reshape(())), value, rel_tol=1e-4):
            return f"constant {name} is {values.ravel()[:3]}, not {value:.6g} (not a GELU)"
        return None

    return check


def _erf_gelu_check(match: Match, graph: EdgeGraph) -> str | None:
    for check in (_constant_is("root2", math.sqrt(2.0)), _constant_is("one", 1.0), _constant_is("half", 0.5)):
        reason = check(match, graph)
        if reason:
            return reason
    return None


# 0.5 * (x * (1 + erf(x / sqrt2))), in the orders exporters write it.
_ERF = Op("Erf", Op("Div", Var("x"), Const("root2")))
_ERF_GELU = Op(
    "Mul",
    Op("Mul", Var("x"), Op("Add", _ERF, Const("one"), commutative=True), commutative=True),
    Const("half"),
    commutative=True,
    name="mul",
)
_ERF_GELU_HALF_FIRST = Op(
    "Mul",
    Op("Mul", Var("x"), Const("half"), commutative=True),
    Op("Add", _ERF, Const("one"), commutative=True),
    commutative=True,
    name="mul",
)

RULES = RuleSet(
    [
        Rule("swish", Op("Mul", Var("x"), Op("Sigmoid", Var("x")), commutative=True, name="mul"), _swish),
        # The driver visits a Swish's Sigmoid before its Mul: the gate it became is fused next round.
        Rule(
            "swish",
            Op("Mul", Var("x"), Op("HardSigmoid", Var("x"), name="gate"), commutative=True, name="mul"),
            _swish,
            _hard_gate_check,
        ),
        Rule("gelu", Op("Gelu", Var("x"), name="act"), _gelu),
        Rule("gelu-erf", _ERF_GELU, _gelu, _erf_gelu_check),
        Rule("gelu-erf", _ERF_GELU_HALF_FIRST, _gelu, _erf_gelu_check),
        Rule("sigmoid", Op("Sigmoid", Var("x"), name="act"), _sigmoid),
    ]
)


@register
@dataclass(frozen=True)
class SubstituteActivation(SubstitutionPass):
    """Replaces Sigmoid, Swish and GELU by their hard (piecewise-linear) variants."""

    name: ClassVar[str] = "substitute-activation"

    def rule_set(self) -> RuleSet:
        return RULES
