"""Fusion passes: structural, numeric and negative tests, and the `default` pipeline on real CNNs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph, load, op_sequence
from edgec.pm import FixedPoint, PassContext, PassManager, parse_pipeline
from edgec.verify import random_inputs, run_onnx
from edgec.zoo import light_model
from tests.helpers import (
    DIGITS,
    FP32_ATOL,
    FP32_RTOL,
    assert_same_outputs,
    covers,
    make_model,
    pass_stats,
    refusal_reasons,
    rng,
    run_pipeline,
)

F = TensorProto.FLOAT


def _bn_params(channels: int, seed: int) -> dict[str, np.ndarray]:
    r = rng(seed)
    return {
        "scale": r.uniform(0.5, 1.5, channels).astype(np.float32),
        "shift": r.normal(0, 0.1, channels).astype(np.float32),
        "mean": r.normal(0, 0.1, channels).astype(np.float32),
        "var": r.uniform(0.5, 1.5, channels).astype(np.float32),
    }


def _bn(x: str, y: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization", [x, "scale", "shift", "mean", "var"], [y], name="bn", **attrs
    )


# ----- fuse-conv-bn ----------------------------------------------------------------------------


def _conv_bn_model(with_bias: bool = True, group: int = 1, training: bool = False) -> onnx.ModelProto:
    weights = {"w": rng(0).standard_normal((4, 4 // group, 3, 3)).astype(np.float32), **_bn_params(4, 1)}
    conv_inputs = ["x", "w"]
    if with_bias:
        weights["b"] = rng(2).standard_normal(4).astype(np.float32)
        conv_inputs.append("b")
    bn_attrs = {"training_mode": 1} if training else {}
    return make_model(
        [
            helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
            _bn("c", "y", **bn_attrs),
        ],
        {"x": (F, [1, 4, 5, 5])},
        {"y": (F, [1, 4, 5, 5])},
        weights,
    )


@covers("fuse-conv-bn", kind="structural")
def test_conv_bn_structure():
    graph, records = run_pipeline("fuse-conv-bn", _conv_bn_model())
    assert op_sequence(graph) == ["Conv"]
    assert "BatchNormalization" not in graph.text()
    assert pass_stats(records, "fuse-conv-bn")["fused"] == 1


@covers("fuse-conv-bn", kind="numeric")
def test_conv_bn_numeric():
    for model in (_conv_bn_model(), _conv_bn_model(with_bias=False), _conv_bn_model(group=2)):
        graph, _ = run_pipeline("fuse-conv-bn", model)
        assert op_sequence(graph) == ["Conv"]
        assert_same_outputs(model, graph.to_onnx())


@covers("fuse-conv-bn", kind="negative")
def test_conv_bn_refuses_training_mode():
    graph, records = run_pipeline("fuse-conv-bn", _conv_bn_model(training=True), verify=False)
    assert op_sequence(graph) == ["Conv", "BatchNormalization"]
    assert refusal_reasons(records, "fuse-conv-bn") == ["BatchNormalization is in training mode"]


# ----- fuse-gemm-bn ----------------------------------------------------------------------------


def _gemm_bn_model(op: str = "Gemm", batch: list[int] | None = None) -> onnx.ModelProto:
    batch = batch or [3]
    weights = {"w": rng(0).standard_normal((5, 6)).astype(np.float32), **_bn_params(6, 1)}
    if op == "Gemm":
        weights["c"] = rng(2).standard_normal(6).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="gemm", alpha=0.5, beta=2.0)
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["g"], name="matmul")
    return make_model([node, _bn("g", "y")], {"x": (F, [*batch, 5])}, {"y": (F, [*batch, 6])}, weights)


@covers("fuse-gemm-bn", kind="structural")
def test_gemm_bn_structure():
    for op in ("Gemm", "MatMul"):
        graph, records = run_pipeline("fuse-gemm-bn", _gemm_bn_model(op))
        assert op_sequence(graph) == ["Gemm"]
        assert "beta=1" in graph.text() or op == "MatMul"
        assert pass_stats(records, "fuse-gemm-bn")["applied"] == {f"{op.lower()}-bn": 1}


@covers("fuse-gemm-bn", kind="numeric")
def test_gemm_bn_numeric():
    for op in ("Gemm", "MatMul"):
        model = _gemm_bn_model(op)
        graph, _ = run_pipeline("fuse-gemm-bn", model)
        assert_same_outputs(model, graph.to_onnx())


@covers("fuse-gemm-bn", kind="negative")
def test_gemm_bn_refuses_a_3d_matmul():
    # BatchNormalization would normalise axis 1 (the sequence), not the MatMul's output features.
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["g"], name="matmul"), _bn("g", "y")],
        {"x": (F, [2, 6, 5])},
        {"y": (F, [2, 6, 6])},
        {"w": rng(0).standard_normal((5, 6)).astype(np.float32), **_bn_params(6, 1)},
    )
    graph, records = run_pipeline("fuse-gemm-bn", model)
    assert op_sequence(graph) == ["MatMul", "BatchNormalization"]
    assert refusal_reasons(records, "fuse-gemm-bn") == ["MatMul input has rank 3, folding needs rank 2"]


# ----- fuse-matmul-add -------------------------------------------------------------------------


def _matmul_add_model(bias_shape: tuple[int, ...] = (6,), rank: int = 2, bias_first: bool = False):
    x_shape = [3, 5] if rank == 2 else [2, 3, 5]
    add_inputs = ["bias", "m"] if bias_first else ["m", "bias"]
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
            helper.make_node("Add", add_inputs, ["y"], name="add"),
        ],
        {"x": (F, x_shape)},
        {"y": (F, [*x_shape[:-1], 6])},
        {
            "w": rng(0).standard_normal((5, 6)).astype(np.float32),
            "bias": rng(1).standard_normal(bias_shape).astype(np.float32),
        },
    )


@covers("fuse-matmul-add", kind="structural")
def test_matmul_add_structure():
    graph, _ = run_pipeline("fuse-matmul-add", _matmul_add_model(bias_first=True))
    assert op_sequence(graph) == ["Gemm"]
    assert "%y = Gemm(%x, @w<float32[5,6]>, @bias<float32[6]>)" in graph.text()


@covers("fuse-matmul-add", kind="numeric")
def test_matmul_add_numeric():
    for shape in ((6,), (1, 6), (1,), ()):
        model = _matmul_add_model(shape)
        graph, _ = run_pipeline("fuse-matmul-add", model)
        assert op_sequence(graph) == ["Gemm"], shape
        assert_same_outputs(model, graph.to_onnx())


@covers("fuse-matmul-add", kind="negative")
def test_matmul_add_refuses_3d_input_and_row_bias():
    graph, records = run_pipeline("fuse-matmul-add", _matmul_add_model(rank=3))
    assert op_sequence(graph) == ["MatMul", "Add"]
    assert refusal_reasons(records, "fuse-matmul-add") == ["MatMul input has rank 3, Gemm needs rank 2"]
    graph, records = run_pipeline("fuse-matmul-add", _matmul_add_model((3, 1)))
    assert op_sequence(graph) == ["MatMul", "Add"]
    assert refusal_reasons(records, "fuse-matmul-add") == [
        "bias shape [3, 1] does not broadcast over the last dimension only"
    ]


# ----- fuse-pad-conv ---------------------------------------------------------------------------


def _pad_conv_model(pads: list[int], mode: str = "constant", value: float = 0.0, opset: int = 17):
    out_h = 6 + pads[2] + pads[6] - 2
    out_w = 6 + pads[3] + pads[7] - 2
    initializers = {
        "w": rng(0).standard_normal((4, 2 + pads[1] + pads[5], 3, 3)).astype(np.float32),
        "b": rng(1).standard_normal(4).astype(np.float32),
    }
    if opset >= 11:
        initializers["pads"] = np.array(pads, np.int64)
        initializers["value"] = np.array(value, np.float32)
        pad = helper.make_node("Pad", ["x", "pads", "value"], ["p"], name="pad", mode=mode)
    else:
        pad = helper.make_node("Pad", ["x"], ["p"], name="pad", mode=mode, pads=pads, value=value)
    return make_model(
        [pad, helper.make_node("Conv", ["p", "w", "b"], ["y"], name="conv", pads=[0, 1, 0, 1])],
        {"x": (F, [1, 2, 6, 6])},
        {"y": (F, [1, 4, out_h, out_w + 2])},
        initializers,
        opset=opset,
    )


@covers("fuse-pad-conv", kind="structural")
def test_pad_conv_structure():
    graph, _ = run_pipeline("fuse-pad-conv", _pad_conv_model([0, 0, 1, 2, 0, 0, 3, 0]))
    assert op_sequence(graph) == ["Conv"]
    assert "pads=[1,3,3,1]" in graph.text()


@covers("fuse-pad-conv", kind="numeric")
def test_pad_conv_numeric():
    for opset in (10, 17):
        model = _pad_conv_model([0, 0, 1, 2, 0, 0, 3, 0], opset=opset)
        graph, _ = run_pipeline("fuse-pad-conv", model)
        assert op_sequence(graph) == ["Conv"], opset
        assert_same_outputs(model, graph.to_onnx())


@covers("fuse-pad-conv", kind="negative")
def test_pad_conv_refuses_reflect_nonzero_value_and_channel_padding():
    cases = {
        "Pad mode is 'reflect', only constant zero padding is a Conv pad": _pad_conv_model(
            [0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"
        ),
        "Pad value is not a constant zero": _pad_conv_model([0, 0, 1, 1, 0, 0, 1, 1], value=1.0),
        "Pad pads the batch or channel axis": _pad_conv_model([0, 1, 1, 1, 0, 0, 1, 1]),
    }
    for reason, model in cases.items():
        graph, records = run_pipeline("fuse-pad-conv", model)
        assert op_sequence(graph) == ["Pad", "Conv"], reason
        assert refusal_reasons(records, "fuse-pad-conv") == [reason]


# ----- fuse-conv-mul-add -----------------------------------------------------------------------


def _conv_mul_add_model(scale_shape, shift_shape, with_bias: bool = False) -> onnx.ModelProto:
    initializers = {
        "w": rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32),
        "s": rng(1).uniform(0.5, 1.5, scale_shape).astype(np.float32),
        "t": rng(2).standard_normal(shift_shape).astype(np.float32),
    }
    conv_inputs = ["x", "w"]
    if with_bias:
        initializers["b"] = rng(3).standard_normal(4).astype(np.float32)
        conv_inputs.append("b")
    return make_model(
        [
            helper.make_node("Conv", conv_inputs, ["c"], name="conv"),
            helper.make_node("Mul", ["s", "c"], ["m"], name="mul"),
            helper.make_node("Add", ["m", "t"], ["y"], name="add"),
        ],
        {"x": (F, [1, 2, 5, 5])},
        {"y": (F, [1, 4, 3, 3])},
        initializers,
    )


@covers("fuse-conv-mul-add", kind="structural")
def test_conv_mul_add_structure():
    graph, records = run_pipeline("fuse-conv-mul-add", _conv_mul_add_model((4, 1, 1), (1, 4, 1, 1)))
    assert op_sequence(graph) == ["Conv"]
    assert pass_stats(records, "fuse-conv-mul-add")["applied"] == {"conv-add": 1, "conv-mul": 1}


@covers("fuse-conv-mul-add", kind="numeric")
def test_conv_mul_add_numeric():
    for scale, shift, bias in (
        ((4, 1, 1), (1, 4, 1, 1), True),
        ((), (1,), False),
        ((1, 4, 1, 1), (4, 1, 1), False),
    ):
        model = _conv_mul_add_model(scale, shift, bias)
        graph, _ = run_pipeline("fuse-conv-mul-add", model)
        assert op_sequence(graph) == ["Conv"]
        assert_same_outputs(model, graph.to_onnx())


@covers("fuse-conv-mul-add", kind="negative")
def test_conv_mul_add_refuses_spatial_operands():
    graph, records = run_pipeline("fuse-conv-mul-add", _conv_mul_add_model((3, 3), (4, 1, 3)))
    assert op_sequence(graph) == ["Conv", "Mul", "Add"]
    assert refusal_reasons(records, "fuse-conv-mul-add") == [
        "operand shape [3, 3] is not per output channel (C=4)"
    ]


# ----- the default pipeline on real models -----------------------------------------------------


def test_default_is_a_fixed_point_of_cleanup_and_fusion():
    (step,) = parse_pipeline("default")
    assert isinstance(step, FixedPoint)
    names = [p.name for p in step.passes]
    assert {"fold-constants", "eliminate-identity", "fuse-conv-bn", "fuse-matmul-add"} <= set(names)


def test_default_on_digits_removes_every_batchnorm():
    original = load(DIGITS / "digits_cnn.onnx")
    before = original.to_onnx()
    run = PassManager("default", PassContext(verify=True)).run(original)
    ops = op_sequence(run.graph)
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3
    assert_same_outputs(before, run.graph.to_onnx(), atol=FP32_ATOL, rtol=0.0)


def test_default_on_resnet50_removes_every_batchnorm():
    model = light_model("resnet50")
    # The seeded random weights saturate the final Softmax (one-hot), which would compare nothing:
    # compare the logits.
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    model.graph.node.remove(softmax)
    model.graph.output[0].name = softmax.input[0]
    graph = EdgeGraph.from_onnx(model)
    run = PassManager("default", PassContext(verify=True)).run(graph)
    ops = op_sequence(run.graph)
    assert "BatchNormalization" not in ops and ops.count("Conv") == 53
    feeds = random_inputs(graph, seed=1)
    expected = run_onnx(model, feeds)
    got = run_onnx(run.graph.to_onnx(), feeds)
    for name, reference in expected.items():
        # Logits reach ~1e5 with random weights: the pass manager's bound, relative to the largest
        # output (atol * max|ref| + rtol * |ref|), is the meaningful fp32 tolerance here.
        bound = FP32_ATOL * max(1.0, float(np.abs(reference).max())) + FP32_RTOL * np.abs(reference)
        assert np.all(np.abs(got[name] - reference) <= bound), name
