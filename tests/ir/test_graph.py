"""EdgeGraph: import/export round trip, unique names, the cached networkx view, copies that share
weights copy-on-write, the printer."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from edgec.ir import EdgeGraph, infer_shapes, op_sequence
from edgec.verify import run_onnx
from tests.conftest import conv_bn_relu_model
from tests.helpers import make_model


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


def _if_model() -> onnx.ModelProto:
    """``y = If(c, then: x + w, else: x)``: a subgraph that reads an outer-scope weight."""
    then = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["t"], name="add")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="same")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])],
    )
    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other)
    return make_model(
        [node],
        {"x": (TensorProto.FLOAT, [2]), "c": (TensorProto.BOOL, [])},
        {"y": (TensorProto.FLOAT, [2])},
        {"w": np.array([1.0, 2.0], np.float32)},
    )


def test_copy_shares_weights_until_one_side_writes() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    fingerprint = graph.fingerprint()
    clone = graph.copy()
    assert graph.fingerprint() == fingerprint  # copying does not change the graph
    weight, twin = graph.tensors()["w"], clone.tensors()["w"]
    assert twin is not weight and clone.node("conv") is not graph.node("conv")
    assert twin.values is weight.values  # one array, loaded once for both
    with pytest.raises(ValueError, match="read-only"):
        twin.values[0, 0, 0, 0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        weight.values *= 2.0
    twin.values = twin.values * 2.0  # copy-on-write: a new array, only the copy sees it
    np.testing.assert_array_equal(twin.values, 2.0 * weight.values)
    exported = {t.name: t for t in graph.to_onnx().graph.initializer}
    np.testing.assert_array_equal(numpy_helper.to_array(exported["w"]), weight.values)
    # New values may have another dtype (a quantizing pass): the copy exports them as they are.
    twin.values = np.ones(twin.values.shape, np.int8)
    exported = {t.name: t for t in clone.to_onnx().graph.initializer}
    assert exported["w"].data_type == TensorProto.INT8


def test_copy_owns_its_nodes_attributes_and_shapes() -> None:
    graph = EdgeGraph.from_onnx(conv_bn_relu_model())
    infer_shapes(graph)
    clone = graph.copy()
    clone.node("relu").op = "Sigmoid"
    clone.node("conv").attrs["pads"][0] = 0
    clone.tensors()["c"].shape[0] = 7
    assert graph.node("relu").op == "Relu"
    assert graph.node("conv").attrs["pads"] == [1, 1, 1, 1]
    assert graph.tensors()["c"].shape == [1, 8, 8, 8]


def test_copy_owns_its_subgraphs_and_keeps_their_outer_references() -> None:
    graph = EdgeGraph.from_onnx(_if_model())
    clone = graph.copy()
    then, twin = graph.node("if").attrs["then_branch"], clone.node("if").attrs["then_branch"]
    assert twin is not then
    twin.nodes[0].op = "Sub"
    assert then.nodes[0].op == "Add"
    # The branch's outer-scope weight is a tensor of the copy's own, sharing the values.
    weight, twin_weight = then.nodes[0].inputs[1], twin.nodes[0].inputs[1]
    assert twin_weight is not weight and twin_weight.values is weight.values
    feeds = {"x": np.array([1.0, 1.0], np.float32), "c": np.array(True)}
    assert run_onnx(clone.to_onnx(), feeds)["y"].tolist() == [0.0, -1.0]
    assert run_onnx(graph.to_onnx(), feeds)["y"].tolist() == [2.0, 3.0]


def test_copy_leaves_packed_int4_weights_lazy_and_packed() -> None:
    packed = helper.make_tensor("q", TensorProto.INT4, [8], [1, -2, 3, -4, 5, -6, 7, -8])
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")],
            "int4",
            [],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])],
            [packed, numpy_helper.from_array(np.array(0.5, np.float32), "s")],
        ),
        opset_imports=[helper.make_opsetid("", 21)],
    )
    graph = EdgeGraph.from_onnx(model)
    clone = graph.copy()
    for copy in (graph, clone):
        assert isinstance(copy.tensors()["q"]._values, LazyValues)
        exported = next(t for t in copy.to_onnx().graph.initializer if t.name == "q")
        assert exported.data_type == TensorProto.INT4 and exported.raw_data == packed.raw_data
    assert run_onnx(clone.to_onnx(), {})["y"].tolist() == [0.5, -1, 1.5, -2, 2.5, -3, 3.5, -4]


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
