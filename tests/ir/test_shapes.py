"""Input shapes: parsing, fixing symbolic dimensions, and refusing contradictions."""

from __future__ import annotations

import pytest

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, fix_input_shapes, infer_shapes, parse_input_shape, parse_shape
from tests.conftest import conv_bn_relu_model


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
