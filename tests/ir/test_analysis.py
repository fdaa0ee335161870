"""Cost analyses: MACs, parameters, bytes, and the activation liveness bound."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph, graph_cost, infer_shapes, peak_live_bytes
from edgec.zoo import light_model
from tests.conftest import conv_bn_relu_model
from tests.helpers import make_model


def test_conv_and_gemm_macs() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    infer_shapes(graph)
    costs = {n.name: n for n in graph_cost(graph).nodes}
    assert costs["conv"].macs == 8 * 8 * 8 * 3 * 3 * 3
    assert costs["conv"].params == 8 * 27 + 8
    assert costs["conv"].weight_bytes == (8 * 27 + 8) * 4
    assert costs["fc"].macs == 4 * 8
    assert costs["relu"].macs == 0 and costs["relu"].output_bytes == 8 * 8 * 8 * 4


def test_grouped_conv_and_matmul_macs() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="flat"),
        helper.make_node("MatMul", ["r", "m"], ["y"], name="mm"),
    ]
    model = make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, 4, 5, 5])},
        {"y": (TensorProto.FLOAT, [1, 6])},
        {
            "w": np.ones((4, 1, 3, 3), np.float32),
            "shape": np.array([1, 100], np.int64),
            "m": np.ones((100, 6), np.float32),
        },
    )
    graph = EdgeGraph.from_onnx(model)
    infer_shapes(graph)
    cost = graph_cost(graph)
    by_name = {n.name: n.macs for n in cost.nodes}
    assert by_name == {"dw": 4 * 5 * 5 * 9, "flat": 0, "mm": 100 * 6}
    assert cost.macs == sum(by_name.values())
    assert cost.params == 36 + 2 + 600


def test_shared_constants_count_once_in_totals() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="a"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="b"),
    ]
    model = make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [2, 3])},
        {"y": (TensorProto.FLOAT, [2, 3])},
        {"w": np.eye(3, dtype=np.float32)},
    )
    graph = EdgeGraph.from_onnx(model)
    infer_shapes(graph)
    cost = graph_cost(graph)
    assert sum(n.params for n in cost.nodes) == 18 and cost.params == 9


def test_peak_live_bytes_of_a_chain() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    infer_shapes(graph)
    # The largest step holds two 8x8x8 float maps (e.g. conv output and bn output).
    assert peak_live_bytes(graph) == 2 * 8 * 8 * 8 * 4


def test_resnet50_totals() -> None:
    graph = EdgeGraph.from_onnx(light_model("resnet50"))
    infer_shapes(graph)
    cost = graph_cost(graph)
    assert 4.0e9 < cost.macs < 4.2e9  # ResNet-50 is ~4.1 GMACs at 224x224
    assert 25.5e6 < cost.params < 25.7e6  # ~25.6 M parameters


def test_packed_int4_weights_count_half_a_byte() -> None:
    import onnx_graphsurgeon as gs
    from ml_dtypes import int4

    from edgec.ir import tensor_bytes

    assert tensor_bytes(gs.Constant("w", np.zeros((3, 3), dtype=int4))) == 5  # 9 nibbles, packed
    assert tensor_bytes(gs.Constant("b", np.zeros(3, dtype=np.float32))) == 12
