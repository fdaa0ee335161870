"""quantize{scheme=fp16,compute=float16}: the graph computes in float16 with float32 I/O."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.errors import EdgecError
from edgec.ir import op_sequence
from edgec.pm import parse_pipeline
from edgec.targets.base import float16_compute_nodes
from edgec.verify import run_onnx_batch
from tests.helpers import make_model, run_pipeline
from tests.passes.quantization.models import digits, normal_samples

F = TensorProto.FLOAT
HALF = "quantize{scheme=fp16,compute=float16}"
# float16 unit roundoff: every op's output (and every weight) is rounded to a relative 2^-11.
FP16_UNIT_ROUNDOFF = 2.0**-11


def _half(model: onnx.ModelProto, calibration=None, evaluation=None, pipeline: str = HALF):
    graph, records = run_pipeline(
        pipeline, model, verify=False, calibration=calibration, evaluation=evaluation
    )
    return graph, records[-1].stats


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed value (inputs, outputs, value_info) and initializer."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info)
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


# ----- structural ------------------------------------------------------------------------------


def test_digits_computes_in_float16_with_float32_io():
    model, calibration, _ = digits()
    graph, stats = _half(model, calibration)
    ops = op_sequence(graph)
    # One Cast in, one Cast out, BatchNormalization folded, nothing cast back and forth between ops.
    assert ops[0] == "Cast" and ops[-1] == "Cast" and ops.count("Cast") == 2
    body = ["Conv", "Relu", "Conv", "Relu", "MaxPool", "Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    assert ops[1:-1] == body
    exported = graph.to_onnx()
    onnx.checker.check_model(exported)
    types = _float_types(exported)
    assert [types[t.name] for t in exported.graph.input] == [TensorProto.FLOAT]
    assert [types[t.name] for t in exported.graph.output] == [TensorProto.FLOAT]
    for node in exported.graph.node:
        if node.op_type in ("Conv", "Gemm", "Relu", "MaxPool"):
            assert {types[name] for name in (*node.input, *node.output)} == {TensorProto.FLOAT16}, node.name
    assert {op for op, _ in float16_compute_nodes(graph)} == {"Conv", "Gemm"}
    assert set(stats["precision"].values()) == {"fp16-compute"} and len(stats["precision"]) == 10
    assert stats["float_nodes"] == [] and stats["folded_batchnorm"] == 3
    # Float16 storage halves the weights (BN folded on both sides of the comparison is 2x exactly).
    assert stats["weight_bytes_after"] * 2 == sum(
        t.values.size * 4 for t in graph.constants() if t.values.dtype == np.float16
    )


def test_pipeline_string_sets_compute():
    (step,) = parse_pipeline(HALF)
    assert step.scheme == "fp16" and step.compute == "float16"
    (default,) = parse_pipeline("quantize{scheme=fp16}")
    assert default.compute == "float32"


def test_fp16_storage_still_computes_in_float32():
    """Without compute=float16 the weights are float16 behind a Cast: no float16 compute op."""
    model, calibration, _ = digits()
    graph, _ = _half(model, calibration, pipeline="quantize{scheme=fp16}")
    assert float16_compute_nodes(graph) == []


def test_out_of_range_values_stay_float32():
    """A constant beyond 65504 and an activation beyond half of it keep their nodes float32, with
    the reason; the float32 nodes are not rounded through float16 between them (no inf)."""
    r = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
            helper.make_node("Mul", ["m1", "big"], ["scaled"], name="scale_up"),
            helper.make_node("Mul", ["scaled", "small"], ["back"], name="scale_down"),
            helper.make_node("Relu", ["back"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        {"x": (F, [2, 16])},
        {"y": (F, [2, 8])},
        {
            "w1": r.normal(0, 0.5, (16, 16)).astype(np.float32),
            "big": np.full(16, 1e5, np.float32),
            "small": np.full(16, 1e-5, np.float32),
            "w2": r.normal(0, 0.5, (16, 8)).astype(np.float32),
        },
    )
    samples = normal_samples(model, 8)
    graph, stats = _half(model, samples)
    reasons = {f["node"]: f["reason"] for f in stats["float_nodes"]}
    assert reasons["scale_up"] == "constant 'big' exceeds the float16 range (65504)"
    assert "tensor 'scaled' reaches" in reasons["scale_down"]
    assert set(reasons) == {"scale_up", "scale_down"}
    assert stats["precision"]["mm1"] == stats["precision"]["mm2"] == "fp16-compute"
    assert stats["precision"]["scale_up"] == "float"
    exported = graph.to_onnx()
    types = _float_types(exported)
    # scale_up -> scale_down passes float32 straight through (the converter's Cast pair is gone).
    scale_down = next(n for n in exported.graph.node if n.name == "scale_down")
    assert types[scale_down.input[0]] == TensorProto.FLOAT
    scale_up = next(n for n in exported.graph.node if n.name == "scale_up")
    assert scale_down.input[0] == scale_up.output[0]
    got = run_onnx_batch(exported, samples)["y"]
    expected = run_onnx_batch(model, samples)["y"]
    assert np.all(np.isfinite(got))
    assert np.abs(got - expected).max() <= 16 * FP16_UNIT_ROUNDOFF * np.abs(expected).max()


def test_converter_block_list_is_reported():
    """onnxruntime's converter keeps TopK (its block list) in float32; edgec says so."""
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node("TopK", ["m", "k"], ["values", "indices"], name="top", axis=-1),
        ],
        {"x": (F, [1, 8])},
        {"values": (F, [1, 3]), "indices": (TensorProto.INT64, [1, 3])},
        {"w": np.random.default_rng(1).normal(0, 1, (8, 8)).astype(np.float32), "k": np.array([3], np.int64)},
    )
    graph, stats = _half(model)
    assert stats["float_nodes"] == [
        {"node": "top", "op": "TopK", "reason": "TopK is on onnxruntime's float16 block list"}
    ]
    assert stats["precision"] == {"top": "float", "mm": "fp16-compute"}
    assert float16_compute_nodes(graph) == [("MatMul", "mm")]


# ----- numeric ---------------------------------------------------------------------------------


def test_digits_error_and_accuracy_vs_float32():
    """Bound: max |y16 - y32| <= 8 unit roundoffs of the largest logit (about ten fp16 roundings
    in sequence, weights included; measured 2.3) and no accuracy lost on the 450 test digits."""
    model, calibration, test = digits()
    graph, stats = _half(model, calibration, test)
    assert stats["error_data"] == "calibration" and stats["error"]["cosine"] > 0.9999
    reference = run_onnx_batch(model, {"input": test["input"][:, None]})["logits"]
    got = run_onnx_batch(graph.to_onnx(), {"input": test["input"][:, None]})["logits"]
    assert np.abs(got - reference).max() <= 8 * FP16_UNIT_ROUNDOFF * np.abs(reference).max()
    assert stats["error"]["max_abs"] <= 8 * FP16_UNIT_ROUNDOFF * np.abs(reference).max()
    assert stats["accuracy"]["drop"] <= 0.0


# ----- negative --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["int8", "weight-int8", "int8-dynamic"])
def test_float16_compute_needs_scheme_fp16(scheme):
    with pytest.raises(EdgecError, match=rf"compute=float16 needs scheme=fp16, not scheme={scheme}; use"):
        parse_pipeline(f"quantize{{scheme={scheme},compute=float16}}")


def test_unknown_compute_dtype_is_refused():
    with pytest.raises(EdgecError, match="compute"):
        parse_pipeline("quantize{scheme=fp16,compute=bfloat16}")
