"""The quantize pass: structure of the QDQ graph, accuracy/size on the digits CNN, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from edgec.errors import EdgecError
from edgec.ir import op_sequence
from edgec.passes.quantization.numerics import activation_params, fake_quantize
from edgec.pm import parse_pipeline
from edgec.verify import accuracy, run_onnx_batch
from edgec.zoo import light_model
from tests.helpers import covers, make_model, run_pipeline
from tests.passes.quantization.models import digits, gemm_model, matmul_model, normal_samples

F = TensorProto.FLOAT


def _quantize(pipeline: str, model: onnx.ModelProto, calibration=None, evaluation=None, **ctx):
    graph, records = run_pipeline(
        pipeline, model, verify=False, calibration=calibration, evaluation=evaluation, **ctx
    )
    return graph, records[-1].stats


def _initializer_types(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: t.data_type for t in model.graph.initializer}


def _digits_accuracy(model: onnx.ModelProto, test: dict[str, np.ndarray]) -> float:
    outputs = run_onnx_batch(model, {"input": test["input"][:, None]})
    return accuracy(outputs["logits"], test["label"])


# ----- structural ------------------------------------------------------------------------------


@covers("quantize", kind="structural")
def test_int8_structure_on_digits():
    model, calibration, _ = digits()
    graph, stats = _quantize("quantize", model, calibration)
    ops = op_sequence(graph)
    # BatchNormalization folded, Relu folded into the Conv's output range, everything else in QDQ.
    assert "BatchNormalization" not in ops and "Relu" not in ops
    assert ops.count("Conv") == 3 and ops.count("Gemm") == 1
    # input, 3 Relu-folded conv outputs, pool, GAP, flatten (pool and flatten share scales), logits
    assert ops.count("QuantizeLinear") == 8
    exported = graph.to_onnx()
    types = _initializer_types(exported)
    for node in exported.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            weight_dq = next(n for n in exported.graph.node if n.output[0] == node.input[1])
            bias_dq = next(n for n in exported.graph.node if n.output[0] == node.input[2])
            assert weight_dq.op_type == bias_dq.op_type == "DequantizeLinear"
            assert types[weight_dq.input[0]] == TensorProto.INT8
            assert types[bias_dq.input[0]] == TensorProto.INT32
    assert stats["precision"]["conv1"] == "int8" and stats["precision"]["relu1"] == "folded into conv1"
    assert stats["precision"]["pool"] == "int8 (shared scale)"
    assert stats["float_nodes"] == [] and stats["opset"] >= 13


@pytest.mark.parametrize(
    ("scheme", "dtype", "op"),
    [
        ("weight-int8", TensorProto.INT8, "DequantizeLinear"),
        ("weight-int4", TensorProto.INT4, "DequantizeLinear"),
        ("weight-int2", TensorProto.INT2, "DequantizeLinear"),
        ("fp16", TensorProto.FLOAT16, "Cast"),
    ],
)
def test_weight_only_structure(scheme, dtype, op):
    model, calibration, _ = digits()
    graph, stats = _quantize(f"quantize{{scheme={scheme}}}", model, calibration)
    exported = graph.to_onnx()
    onnx.checker.check_model(exported)
    types = _initializer_types(exported)
    conv = next(n for n in exported.graph.node if n.op_type == "Conv")
    producer = next(n for n in exported.graph.node if n.output[0] == conv.input[1])
    assert producer.op_type == op and types[producer.input[0]] == dtype
    assert "QuantizeLinear" not in op_sequence(graph)  # activations stay float
    assert stats["scheme"] == scheme


def test_dynamic_structure():
    graph, stats = _quantize("quantize{scheme=int8-dynamic}", matmul_model())
    ops = op_sequence(graph)
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    assert "MatMul" not in ops
    assert stats["precision"] == {"mm1": "int8-dynamic", "mm2": "int8-dynamic"}
    assert stats["error_data"] == "random"


def test_pipeline_options_parse():
    (step,) = parse_pipeline("quantize{scheme=int8,calibration=entropy,exclude=conv1:fc,budget=0.01}")
    assert step.calibration == "entropy" and step.exclude == ("conv1", "fc") and step.budget == 0.01


def test_relu_before_signed_concat_is_not_folded():
    """Concat shares one scale; a signed partner makes the Relu clamp unrepresentable, so it stays."""
    r = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
            helper.make_node("Concat", ["r1", "c2"], ["cat"], name="cat", axis=1),
            helper.make_node("Conv", ["cat", "w3"], ["y"], name="conv3"),
        ],
        {"x": (F, [1, 3, 6, 6])},
        {"y": (F, [1, 2, 6, 6])},
        {
            "w1": r.normal(0, 1, (4, 3, 1, 1)).astype(np.float32),
            "b1": r.normal(0, 1, 4).astype(np.float32),
            "w2": r.normal(0, 1, (4, 3, 1, 1)).astype(np.float32),
            "w3": r.normal(0, 1, (2, 8, 1, 1)).astype(np.float32),
        },
    )
    graph, stats = _quantize("quantize", model, normal_samples(model, 16))
    assert "Relu" in op_sequence(graph) and stats["folded_activations"] == 0
    assert "not folded" in stats["float_nodes"][0]["reason"]
    assert stats["error"]["cosine"] > 0.999


# ----- numeric ---------------------------------------------------------------------------------


def test_gemm_matches_integer_reference_within_one_step():
    """ORT on the QDQ Gemm equals the numpy model of the same arithmetic within one output step:
    y = fq(fq(x) @ (s_w q_w)^T + s_x s_w q_b), fq = Q/DQ with the calibrated params."""
    model = gemm_model()
    calibration = normal_samples(model, 64, seed=1)
    graph, _ = _quantize("quantize", model, calibration)
    held = normal_samples(model, 16, seed=2)
    got = run_onnx_batch(graph.to_onnx(), held)["y"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    x_params = activation_params(calibration["x"].min(), calibration["x"].max(), symmetric=False)
    float_out = run_onnx_batch(model, calibration)["y"]
    y_params = activation_params(float_out.min(), float_out.max(), symmetric=False)
    w = weights["w"]
    w_scale = np.abs(w).max(axis=1) / 127
    w_q = np.clip(np.round(w / w_scale[:, None]), -127, 127) * w_scale[:, None]
    b_q = np.round(weights["b"] / (x_params.scale * w_scale)) * (x_params.scale * w_scale)
    expected = fake_quantize(fake_quantize(held["x"], x_params) @ w_q.T + b_q, y_params)
    assert np.max(np.abs(got - expected)) <= y_params.scale * 1.0001


@covers("quantize", kind="numeric")
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_int8_digits_accuracy_and_size(method):
    """Bound: at most 0.5 points of test accuracy lost; int8 weights 4x smaller than their fp32."""
    model, calibration, test = digits()
    graph, stats = _quantize(f"quantize{{calibration={method}}}", model, calibration, test)
    drop = _digits_accuracy(model, test) - _digits_accuracy(graph.to_onnx(), test)
    assert drop <= 0.005, (method, drop)
    assert stats["accuracy"]["drop"] == pytest.approx(drop, abs=1e-6)
    assert stats["integer_weights"]["compression"] >= 3.9
    assert stats["weight_bytes_after"] * 3.7 < stats["weight_bytes_before"]  # incl. scales, int32 bias
    assert stats["error"]["cosine"] > 0.99


def test_weight_int4_digits():
    """Bound: int4 weight-only loses at most 2 points; int4 weights are 8x smaller (packed)."""
    model, calibration, test = digits()
    _, stats = _quantize("quantize{scheme=weight-int4}", model, calibration, test)
    assert stats["accuracy"]["drop"] <= 0.02
    assert stats["integer_weights"]["compression"] >= 7.5
    assert stats["weight_bytes_after"] * 7.4 < stats["weight_bytes_before"]


@pytest.mark.parametrize(
    ("scheme", "bound"), [("weight-int8", 0.03), ("fp16", 0.002), ("int8-dynamic", 0.02)]
)
def test_data_free_schemes_error(scheme, bound):
    """Relative mean output error on calibration samples below ``bound``."""
    model = matmul_model()
    _, stats = _quantize(f"quantize{{scheme={scheme}}}", model, normal_samples(model, 16))
    assert stats["error"]["relative"] < bound
    assert stats["error_data"] == "calibration"


def test_squeezenet_int8_error():
    """A real architecture (random He weights, random calibration): cosine to float > 0.99."""
    model = light_model("squeezenet")
    _, stats = _quantize("default,quantize", model, normal_samples(model, 8))
    assert stats["quantized"] >= 30 and stats["error"]["cosine"] > 0.99
    reasons = {f["op"]: f["reason"] for f in stats["float_nodes"]}
    assert "Softmax" in reasons


def test_budget_keeps_sensitive_layers_float():
    model, calibration, _ = digits()
    _, stats = _quantize("quantize{budget=0.01,budget_metric=error}", model, calibration)
    budget = stats["budget"]
    assert budget["all_int8"] > 0.01 and budget["met"] and budget["value"] <= 0.01
    assert budget["kept_float"] and budget["kept_float"][0] == budget["table"][0]["node"]
    for name in budget["kept_float"]:
        assert stats["precision"][name] == "float"


# ----- negative --------------------------------------------------------------------------------


def _relu_only_model() -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Softmax", ["x"], ["y"], name="softmax")], {"x": (F, [1, 4])}, {"y": (F, [1, 4])}
    )


@pytest.mark.parametrize(
    ("pipeline", "calibration", "message"),
    [
        ("quantize", None, "needs calibration data"),
        ("quantize", {"x": np.zeros((0, 1, 16), np.float32)}, "no samples"),
        ("quantize", {"x": np.full((4, 1, 16), np.nan, np.float32)}, "NaN or Inf"),
        ("quantize", {"y": np.zeros((4, 1, 16), np.float32)}, "missing ['x']"),
        ("quantize", {"x": np.zeros((4, 1, 15), np.float32)}, "expected N samples"),
        ("quantize", {"x": np.zeros((4, 1, 16), np.float64)}, "dtype float64"),
        ("quantize{exclude=nope}", None, "unknown nodes"),
    ],
)
def test_bad_calibration_is_a_clear_error(pipeline, calibration, message):
    with pytest.raises(EdgecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _quantize(pipeline, gemm_model(), calibration)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [("quantize{scheme=int3}", "not one of"), ("quantize{calibration=kl}", "not one of")],
)
def test_unknown_scheme_or_method(pipeline, message):
    with pytest.raises(EdgecError, match=message):
        parse_pipeline(pipeline)


@covers("quantize", kind="negative")
def test_no_quantizable_op():
    model = _relu_only_model()
    for scheme in ("int8", "weight-int8", "int8-dynamic", "fp16"):
        with pytest.raises(EdgecError, match="no quantizable op"):
            _quantize(f"quantize{{scheme={scheme}}}", model, normal_samples(model, 4))


def test_nan_weight_names_the_node():
    model = gemm_model()
    model.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(np.full((8, 16), np.inf, np.float32), model.graph.initializer[0].name)
    )
    with pytest.raises(EdgecError, match=r"Gemm 'fc'.*NaN or Inf"):
        _quantize("quantize", model, normal_samples(model, 4))


def test_single_sample_warns():
    warnings: list[str] = []
    _quantize("quantize", gemm_model(), normal_samples(gemm_model(), 1), warn=warnings.append)
    assert any("single sample" in w for w in warnings)


@covers("quantize", kind="negative")
def test_excluded_node_stays_float_with_reason():
    model = matmul_model()
    graph, stats = _quantize("quantize{exclude=mm1}", model, normal_samples(model, 8))
    assert stats["precision"]["mm1"] == "float" and stats["precision"]["mm2"] == "int8"
    assert "excluded" in next(f["reason"] for f in stats["float_nodes"] if f["node"] == "mm1")
    mm1 = next(n for n in graph.nodes if n.name == "mm1")
    assert mm1.inputs[0].name == "x"  # no QuantizeLinear in front of the float layer


def test_calibration_reports_progress_over_every_sample():
    model, calibration, _ = digits()
    calls: list[tuple[str, int]] = []
    advanced: list[int] = []

    def progress(description: str, total: int):
        calls.append((description, total))
        return advanced.append

    run_pipeline("quantize", model, verify=False, calibration=calibration, progress=progress)
    count = len(calibration["input"])
    assert calls and calls[0][0].startswith("calibrating") and calls[0][1] == count
    assert sum(advanced) == count


def test_opset_conversion_leaves_static_shapes():
    """Quantizing an opset-11 model converts it to opset 13, where onnx's converter writes Softmax
    as Shape → Flatten → Softmax → Reshape; the shapes are folded again, so it still lowers."""
    r = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
            helper.make_node("Softmax", ["p"], ["y"], name="softmax", axis=1),
        ],
        {"x": (F, [1, 3, 6, 6])},
        {"y": (F, [1, 8, 1, 1])},
        {"w": r.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "b": np.zeros(8, np.float32)},
        opset=11,
    )
    graph, stats = _quantize("quantize", model, normal_samples(model, 8))
    assert stats["opset"] == 13
    ops = op_sequence(graph)
    assert "Shape" not in ops and "Softmax" in ops
    reshapes = [n for n in graph.nodes if n.op == "Reshape"]
    assert all(isinstance(n.inputs[1], gs.Constant) for n in reshapes)
    assert stats["error"]["cosine"] > 0.99
