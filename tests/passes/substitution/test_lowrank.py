"""factorize-lowrank: Gemm and Conv factorizations, the rank choice, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgec.errors import EdgecError
from edgec.ir import op_sequence
from edgec.passes.substitution.lowrank import choose_rank
from tests.helpers import assert_same_outputs, covers, make_model, rng, run_pipeline


def _gemm_model(weights: np.ndarray):
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transB=1)]
    return make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, weights.shape[1]])},
        {"y": (TensorProto.FLOAT, [1, weights.shape[0]])},
        {"w": weights.astype(np.float32), "c": np.ones(weights.shape[0], np.float32)},
    )


def _low_rank(rows: int, cols: int, rank: int, seed: int = 0) -> np.ndarray:
    generator = rng(seed)
    return generator.normal(size=(rows, rank)) @ generator.normal(size=(rank, cols))


@covers("factorize-lowrank", kind="structural")
def test_gemm_of_rank_r_factorizes_exactly():
    model = _gemm_model(_low_rank(64, 48, 4))
    graph, records = run_pipeline("factorize-lowrank{energy=0.999}", model, verify=False)
    assert op_sequence(graph) == ["Gemm", "Gemm"]
    assert [list(n.inputs[1].shape) for n in graph.nodes] == [[48, 4], [4, 64]]
    assert records[0].stats["macs"] == [64 * 48, 4 * (64 + 48)]
    assert_same_outputs(model, graph.to_onnx(), atol=1e-3, rtol=1e-4)


@covers("factorize-lowrank", kind="numeric")
def test_conv_spatial_svd_with_fixed_rank():
    # M[(c, i), (o, j)] = W[o, c, i, j] of rank 8: the rank-8 factorization is exact.
    matrix = _low_rank(8 * 3, 16 * 3, 8, seed=1) * 0.1
    weights = matrix.reshape(8, 3, 16, 3).transpose(2, 0, 1, 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    model = make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, 8, 6, 6])},
        {"y": (TensorProto.FLOAT, [1, 16, 6, 6])},
        {"w": weights, "b": np.zeros(16, np.float32)},
    )
    graph, records = run_pipeline("factorize-lowrank{rank=8}", model, verify=False)
    vertical, horizontal = graph.nodes
    assert list(vertical.inputs[1].shape) == [8, 8, 3, 1] and vertical.attrs["pads"] == [1, 0, 1, 0]
    assert list(horizontal.inputs[1].shape) == [16, 8, 1, 3] and horizontal.attrs["pads"] == [0, 1, 0, 1]
    assert records[0].stats["macs"] == [16 * 8 * 9 * 36, 8 * 8 * 3 * 36 + 16 * 8 * 3 * 36]
    assert_same_outputs(model, graph.to_onnx(), atol=1e-4)
    assert records[0].stats["error"]["relative"] < 1e-5


def test_energy_picks_the_smallest_sufficient_rank():
    singular = np.array([3.0, 2.0, 1.0, 0.5])
    total = (singular**2).sum()
    assert choose_rank(singular, 0, 9 / total) == 1
    assert choose_rank(singular, 0, 13 / total) == 2
    assert choose_rank(singular, 0, 13.01 / total) == 3
    assert choose_rank(singular, 2, 0.9) == 2


@covers("factorize-lowrank", kind="negative")
def test_refuses_when_the_rank_does_not_reduce_macs():
    model = _gemm_model(rng().normal(size=(10, 12)))
    graph, records = run_pipeline("factorize-lowrank{energy=0.99}", model, verify=False)
    assert op_sequence(graph) == ["Gemm"] and not records[0].changed
    assert "does not reduce MACs" in records[0].stats["refused"][0]["reason"]
    with pytest.raises(EdgecError, match="energy"):
        run_pipeline("factorize-lowrank{energy=1.5}", model, verify=False)
