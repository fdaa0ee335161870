"""Input shapes: parsing, fixing symbolic dimensions, refusing contradictions, and inference that
never copies weight bytes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, fix_input_shapes, infer_shapes, parse_input_shape, parse_shape
from tests.conftest import conv_bn_relu_model
from tests.helpers import make_model


def test_parse_shapes() -> None:
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape("[1,3]") == (1, 3)
    assert parse_shape("") == ()
    assert parse_input_shape("input = 1x2") == ("input", (1, 2))
    for bad in ("1xax2", "0x3"):
        with pytest.raises(EdgecError, match="bad shape"):
            parse_shape(bad)
    with pytest.raises(EdgecError, match="NAME=1x3x224x224"):
        parse_input_shape("1x3")


def test_fixing_a_symbolic_batch_propagates_to_outputs() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model(batch="N"))
    fix_input_shapes(graph, {"x": (2, 3, 8, 8)})
    infer_shapes(graph)
    assert graph.outputs[0].shape == [2, 4]


def test_unfixed_or_contradicting_shapes_are_refused() -> None:
    with pytest.raises(EdgecError, match=r"symbolic.*--input-shape x=1"):
        fix_input_shapes(EdgeGraph.from_onnx(conv_bn_relu_model(batch="N")), {})
    with pytest.raises(EdgecError, match="contradicts"):
        fix_input_shapes(EdgeGraph.from_onnx(conv_bn_relu_model()), {"x": (1, 3, 9, 9)})
    with pytest.raises(EdgecError, match=r"inputs are \['x'\]"):
        fix_input_shapes(EdgeGraph.from_onnx(conv_bn_relu_model()), {"image": (1,)})


def _matmul_reshape_model() -> onnx.ModelProto:
    """``y = Reshape(x · w, target)``: a 64 KiB weight and a small constant whose value inference
    must see (the Reshape target)."""
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
            helper.make_node("Reshape", ["h", "target"], ["y"], name="reshape"),
        ],
        {"x": (TensorProto.FLOAT, [2, 128])},
        {"y": (TensorProto.FLOAT, ["a", "b", "c"])},
        {
            "w": np.ones((128, 128), np.float32),
            "target": np.array([4, 8, -1], np.int64),
        },
    )


def test_shape_inference_exports_no_weight_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = EdgeGraph.from_onnx(_matmul_reshape_model())
    exported: list[tuple[dict[str, int], list[str], int]] = []
    export = EdgeGraph.to_onnx

    def spy(self: EdgeGraph, **options: int) -> onnx.ModelProto:
        model = export(self, **options)
        # Recorded as exported, before anything downstream edits the model.
        initializers = {t.name: t.ByteSize() for t in model.graph.initializer}
        exported.append((initializers, [value.name for value in model.graph.input], model.ByteSize()))
        return model

    monkeypatch.setattr(EdgeGraph, "to_onnx", spy)
    infer_shapes(graph)
    assert graph.outputs[0].shape == [4, 8, 8] and graph.tensors()["h"].shape == [2, 128]
    assert len(exported) == 1
    initializers, inputs, size = exported[0]
    # The weight is a typed input; only the Reshape target travels as an initializer.
    assert list(initializers) == ["target"] and inputs == ["x", "w"]
    assert size < 4096  # the 64 KiB of weight bytes were never copied
    assert not isinstance(graph.tensors()["w"]._values, np.ndarray)  # nor loaded
