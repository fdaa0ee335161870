"""fold-constants: structural (printed ops), numeric (onnxruntime) and negative tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgec.ir import op_sequence
from tests.helpers import (
    assert_same_outputs,
    covers,
    make_model,
    pass_stats,
    refusal_reasons,
    rng,
    run_pipeline,
)

F = TensorProto.FLOAT


def _constant_subgraph_model() -> onnx.ModelProto:
    """y = x + transpose(a) * 2 + reshape(x's static shape) chain folded by Shape."""
    return make_model(
        [
            helper.make_node("Transpose", ["a"], ["at"], perm=[1, 0], name="t"),
            helper.make_node("Mul", ["at", "two"], ["scaled"], name="scale"),
            helper.make_node("Add", ["x", "scaled"], ["s"], name="add"),
            helper.make_node("Shape", ["x"], ["shape"], name="shape"),
            helper.make_node("Reshape", ["s", "shape"], ["y"], name="reshape"),
        ],
        {"x": (F, [3, 2])},
        {"y": (F, [3, 2])},
        {"a": rng(1).standard_normal((2, 3)).astype(np.float32), "two": np.array(2.0, np.float32)},
    )


@covers("fold-constants", kind="structural")
def test_fold_constants_structure():
    graph, records = run_pipeline("fold-constants", _constant_subgraph_model())
    assert op_sequence(graph) == ["Add", "Reshape"]
    assert "Transpose" not in graph.text() and "Shape" not in graph.text()
    assert pass_stats(records, "fold-constants")["folded"] == 3


@covers("fold-constants", kind="numeric")
def test_fold_constants_numeric():
    model = _constant_subgraph_model()
    graph, _ = run_pipeline("fold-constants", model)
    assert_same_outputs(model, graph.to_onnx())


@covers("fold-constants", kind="negative")
def test_fold_constants_refuses_a_result_over_the_size_cap():
    model = make_model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
            helper.make_node("Add", ["x", "big"], ["y"], name="add"),
        ],
        {"x": (F, [64, 64])},
        {"y": (F, [64, 64])},
        {"shape": np.array([64, 64], np.int64)},
    )
    graph, records = run_pipeline("fold-constants{max_bytes=1024}", model)
    assert op_sequence(graph) == ["ConstantOfShape", "Add"]
    assert refusal_reasons(records, "fold-constants") == [
        "result 'big' would be 16384 bytes (max_bytes=1024)"
    ]


def test_fold_constants_leaves_random_and_quantized_weights():
    model = make_model(
        [
            helper.make_node("RandomNormal", [], ["noise"], shape=[4], name="noise"),
            helper.make_node("DequantizeLinear", ["q", "s"], ["w"], name="dq"),
            helper.make_node("Add", ["x", "w"], ["xw"], name="add"),
            helper.make_node("Add", ["xw", "noise"], ["y"], name="add_noise"),
        ],
        {"x": (F, [4])},
        {"y": (F, [4])},
        {"q": np.array([1, 2, 3, 4], np.int8), "s": np.array(0.5, np.float32)},
    )
    graph, records = run_pipeline("fold-constants", model, verify=False)
    assert op_sequence(graph).count("RandomNormal") == 1 and "DequantizeLinear" in op_sequence(graph)
    assert sorted(refusal_reasons(records, "fold-constants")) == [
        "keeps quantized weights quantized",
        "random values must differ between runs",
    ]


def test_fold_constants_options_are_typed():
    graph, records = run_pipeline("fold-constants{fold_shapes=false}", _constant_subgraph_model())
    assert "Shape" in op_sequence(graph)
    assert records[0].options == {"max_bytes": 16 << 20, "fold_shapes": False}
