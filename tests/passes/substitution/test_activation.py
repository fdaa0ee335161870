"""substitute-activation: Sigmoid, Swish and GELU (op and erf form) become hard variants."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from edgec.ir import op_sequence
from edgec.verify import run_onnx
from tests.helpers import covers, make_model, run_pipeline

IO = ({"x": (TensorProto.FLOAT, [1, 64])}, {"y": (TensorProto.FLOAT, [1, 64])})


def _run(model, x):
    return run_onnx(model, {"x": x})["y"]


@covers("substitute-activation", kind="structural")
def test_sigmoid_and_swish_become_hard_sigmoid_and_hard_swish():
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
        helper.make_node("Mul", ["s", "x"], ["w"], name="swish"),
        helper.make_node("Sigmoid", ["w"], ["y"], name="gate"),
    ]
    model = make_model(nodes, *IO)
    graph, records = run_pipeline("substitute-activation", model, verify=False)
    assert op_sequence(graph) == ["HardSwish", "HardSigmoid"]
    # The Swish's Sigmoid is rewritten first (graph order), then fused with its Mul.
    assert records[0].stats["applied"] == {"sigmoid": 2, "swish": 1}
    x = np.linspace(-4, 4, 64, dtype=np.float32)[None]
    hard_swish = x * np.clip(x / 6 + 0.5, 0, 1)
    np.testing.assert_allclose(_run(graph.to_onnx(), x), np.clip(hard_swish / 6 + 0.5, 0, 1), atol=1e-6)
    # A few hundredths away from the smooth form: the output error says so.
    assert 0 < records[0].stats["error"]["max_abs"] < 0.2


@covers("substitute-activation", kind="numeric")
def test_erf_gelu_becomes_x_times_hard_sigmoid():
    nodes = [
        helper.make_node("Div", ["x", "root2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["a"], name="add"),
        helper.make_node("Mul", ["x", "a"], ["m"], name="mul"),
        helper.make_node("Mul", ["m", "half"], ["y"], name="half_mul"),
    ]
    constants = {"root2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    model = make_model(nodes, *IO, constants)
    graph, _ = run_pipeline("substitute-activation", model, verify=False)
    assert op_sequence(graph) == ["HardSigmoid", "Mul"]
    x = np.linspace(-3, 3, 64, dtype=np.float32)[None]
    np.testing.assert_allclose(_run(graph.to_onnx(), x), x * np.clip(1.702 * x / 6 + 0.5, 0, 1), atol=1e-6)


@covers("substitute-activation", kind="negative")
def test_leaves_a_non_gelu_erf_and_relu_alone():
    nodes = [
        helper.make_node("Div", ["x", "three"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["a"], name="add"),
        helper.make_node("Mul", ["x", "a"], ["m"], name="mul"),
        helper.make_node("Mul", ["m", "half"], ["r"], name="half_mul"),
        helper.make_node("Relu", ["r"], ["y"], name="relu"),
    ]
    constants = {"three": np.float32(3), "one": np.float32(1), "half": np.float32(0.5)}
    model = make_model(nodes, *IO, constants)
    graph, records = run_pipeline("substitute-activation", model, verify=False)
    assert not records[0].changed and "Relu" in op_sequence(graph)
    assert "not a GELU" in records[0].stats["refused"][0]["reason"]
