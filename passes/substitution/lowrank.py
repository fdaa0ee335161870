"""``factorize-lowrank``: a weight matrix becomes the product of two thin ones (truncated SVD).

- Gemm / MatMul with a constant 2-D weight ``W`` (``[K, N]``): ``W ~= A B`` with ``A = U_r S_r``
  ``[K, r]`` and ``B = V_r^T`` ``[r, N]``: two products, ``r (K + N)`` MACs per row instead of
  ``K N``.
- Conv ``[O, C, kh, kw]`` with kh, kw > 1 (spatial SVD, Jaderberg et al. 2014): the matrix
  ``M[(c, i), (o, j)] = W[o, c, i, j]`` ``~= U_r S_r V_r^T`` gives a vertical ``kh x 1`` Conv
  ``C -> r`` and a horizontal ``1 x kw`` Conv ``r -> O``; a 1x1 Conv factorizes as a matrix.

The rank is ``rank`` or, with ``rank=0``, the smallest one keeping ``energy`` of
``sum(sigma^2)``. A layer whose factorization would not reduce its MACs is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.passes.substitution.common import SubstitutionPass
from edgec.pm import register
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var

_MATMUL = Op(("Gemm", "MatMul"), Var("x"), Const("w"), Optional(Const("c")), name="layer")
_CONV = Op("Conv", Var("x"), Const("w"), Optional(Const("b")), name="layer")


def choose_rank(singular: np.ndarray, rank: int, energy: float) -> int:
    """``rank`` (at most the full rank) or the smallest rank keeping ``energy`` of ``sum(s^2)``."""
    if rank:
        return min(rank, len(singular))
    cumulative = np.cumsum(singular.astype(np.float64) ** 2)
    return int(np.searchsorted(cumulative, energy * cumulative[-1] * (1 - 1e-12)) + 1)


def factors(matrix: np.ndarray, rank: int, energy: float) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` with ``A @ B`` the best rank-r approximation of ``matrix`` (``A = U_r S_r``)."""
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    r = choose_rank(s, rank, energy)
    return (u[:, :r] * s[:r]).astype(matrix.dtype), vt[:r].astype(matrix.dtype)


def _conv_matrix(weights: np.ndarray) -> np.ndarray:
    out_channels, in_channels, kh, kw = weights.shape
    return weights.transpose(1, 2, 0, 3).reshape(in_channels * kh, out_channels * kw)


def _rules(rank: int, energy: float, exclude: frozenset[str]) -> RuleSet:
    def matmul_check(match: Match, graph: EdgeGraph) -> str | None:
        layer, weights = match["layer"], match.const("w")
        if layer.name in exclude:
            return "excluded by the user"
        if weights.ndim != 2 or weights.dtype.kind != "f":
            return "the weight is not a 2-D floating-point matrix"
        if layer.op == "Gemm" and (layer.attrs.get("transA", 0) or layer.attrs.get("alpha", 1.0) != 1.0):
            return "Gemm with transA or alpha != 1 (run the cleanup passes first)"
        matrix = weights.T if layer.attrs.get("transB", 0) else weights
        a, _ = factors(matrix, rank, energy)
        k, n = matrix.shape
        if a.shape[1] * (k + n) >= k * n:
            return f"rank {a.shape[1]} does not reduce MACs ({a.shape[1]} x ({k} + {n}) >= {k} x {n})"
        return None

    def matmul_replace(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        layer = match["layer"]
        transposed = bool(layer.attrs.get("transB", 0))
        a, b = factors(match.const("w").T if transposed else match.const("w"), rank, energy)
        middle = gs.Variable(graph.fresh_name(f"{layer.name}_lowrank"), dtype=np.float32)
        first = gs.Node(
            "MatMul" if layer.op == "MatMul" else "Gemm",
            graph.fresh_name(f"{layer.name}_u"),
            {},
            [match["x"], graph.add_constant(f"{layer.name}_u", a)],
            [middle],
        )
        attrs = {k: v for k, v in layer.attrs.items() if k not in ("transB",)}
        inputs = [middle, graph.add_constant(f"{layer.name}_v", b)]
        if match["c"] is not None:
            inputs.append(match["c"])
        return [first, gs.Node(layer.op, layer.name, attrs, inputs, match.outputs)]

    def conv_check(match: Match, graph: EdgeGraph) -> str | None:
        layer, weights = match["layer"], match.const("w")
        if layer.name in exclude:
            return "excluded by the user"
        if weights.ndim != 4 or weights.dtype.kind != "f":
            return "not a 2-D convolution with floating-point weights"
        if layer.attrs.get("group", 1) != 1:
            return "grouped convolution"
        if (weights.shape[2] == 1) != (weights.shape[3] == 1):
            return "a 1xk or kx1 convolution is already separable"
        out_channels, in_channels, kh, kw = weights.shape
        matrix = _conv_matrix(weights)
        a, _ = factors(matrix, rank, energy)
        if a.shape[1] * (in_channels * kh + out_channels * kw) >= out_channels * in_channels * kh * kw:
            return f"rank {a.shape[1]} does not reduce MACs"
        return None

    def conv_replace(match: Match, graph: EdgeGraph) -> list[gs.Node]:
        layer = match["layer"]
        out_channels, in_channels, kh, kw = match.const("w").shape
        a, b = factors(_conv_matrix(match.const("w")), rank, energy)
        r = a.shape[1]
        vertical = a.reshape(in_channels, kh, r).transpose(2, 0, 1).reshape(r, in_channels, kh, 1)
        horizontal = b.reshape(r, out_channels, kw).transpose(1, 0, 2).reshape(out_channels, r, 1, kw)
        pads = list(layer.attrs.get("pads", [0, 0, 0, 0]))
        strides = list(layer.attrs.get("strides", [1, 1]))
        dilations = list(layer.attrs.get("dilations", [1, 1]))
        if layer.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise EdgecError(f"Conv '{layer.name}': factorize-lowrank needs explicit pads, not auto_pad")
        middle = gs.Variable(graph.fresh_name(f"{layer.name}_vertical"), dtype=np.float32)
        first_attrs = {
            "pads": [pads[0], 0, pads[2], 0],
            "strides": [strides[0], 1],
            "dilations": [dilations[0], 1],
        }
        second_attrs = {
            "pads": [0, pads[1], 0, pads[3]],
            "strides": [1, strides[1]],
            "dilations": [1, dilations[1]],
        }
        inputs = [middle, graph.add_constant(f"{layer.name}_h_w", horizontal)]
        if match["b"] is not None:
            inputs.append(match["b"])
        return [
            gs.Node(
                "Conv",
                graph.fresh_name(f"{layer.name}_v"),
                first_attrs,
                [match["x"], graph.add_constant(f"{layer.name}_v_w", vertical)],
                [middle],
            ),
            gs.Node("Conv", layer.name, second_attrs, inputs, match.outputs),
        ]

    return RuleSet(
        [
            Rule("lowrank-matmul", _MATMUL, matmul_replace, matmul_check),
            Rule("lowrank-conv", _CONV, conv_replace, conv_check),
        ],
        max_rounds=1,
    )


@register
@dataclass(frozen=True)
class FactorizeLowRank(SubstitutionPass):
    """Factorizes Gemm/MatMul weights and Conv kernels into two thin layers by truncated SVD."""

    name: ClassVar[str] = "factorize-lowrank"
    rank: int = 0
    energy: float = 0.9
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise EdgecError(f"rank must be positive (or 0 to choose it by energy), got {self.rank}")
        if not 0.0 < self.energy <= 1.0:
            raise EdgecError(f"energy must be in (0, 1], got {self.energy}")

    def rule_set(self) -> RuleSet:
        return _rules(self.rank, self.energy, frozenset(self.exclude))
