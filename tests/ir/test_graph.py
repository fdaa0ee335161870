"""EdgeGraph: import/export round trip, unique names, the cached networkx view, the printer."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, op_sequence
from tests.conftest import conv_bn_relu_model


def test_round_trip_keeps_metadata_and_opsets() -> None:
    model = conv_bn_relu_model()
    model.metadata_props.add(key="author", value="tests")
    model.producer_name = "maker"
    exported = EdgeGraph.from_onnx(model).to_onnx()
    onnx.checker.check_model(exported)
    assert {p.key: p.value for p in exported.metadata_props} == {"author": "tests"}
    assert exported.producer_name == "maker"
    assert [(o.domain, o.version) for o in exported.opset_import] == [("", 17)]
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in model.graph.node]


def test_unnamed_and_duplicate_nodes_get_unique_names() -> None:
    model = conv_bn_relu_model()
    model.graph.node[1].name = ""
    model.graph.node[2].name = "conv"
    graph = EdgeGraph.from_onnx(model)
    names = [n.name for n in graph.nodes]
    assert len(set(names)) == len(names)
    assert names[1] == "BatchNormalization_1"


def test_networkx_view_is_rebuilt_after_a_change() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    view = graph.nx
    assert graph.nx is view  # cached while nothing changes
    assert list(view.successors("conv")) == ["bn"]
    relu = graph.node("relu")
    bn_out = graph.node("bn").outputs[0]
    identity_out = gs.Variable("id_out", dtype=bn_out.dtype)
    graph.gs.nodes.append(gs.Node("Identity", name="extra", inputs=[bn_out], outputs=[identity_out]))
    relu.inputs[0] = identity_out
    assert graph.nx is not view
    assert list(graph.nx.successors("bn")) == ["extra"]
    assert list(graph.nx.successors("extra")) == ["relu"]


def test_copy_shares_nothing() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    clone = graph.copy()
    clone.node("relu").op = "Sigmoid"
    assert graph.node("relu").op == "Relu"


def test_printer_is_stable_and_readable() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    text = graph.text()
    assert text == EdgeGraph.from_onnx(conv_bn_relu_model()).text()
    assert "  input %x: float32[1,3,8,8]" in text
    assert "%c = Conv(%x, @w<float32[8,3,3,3]>, @b<float32[8]>) {pads=[1,1,1,1]}  # conv" in text
    assert text.rstrip().endswith("output %y: float32[1,4]")
    assert op_sequence(graph) == [
        "Conv",
        "BatchNormalization",
        "Relu",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
    ]
