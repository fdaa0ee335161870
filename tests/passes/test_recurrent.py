"""decompose-lstm / decompose-gru / decompose-rnn: structure, numerics against onnxruntime, refusals.

Numeric tolerance: fp32 lossless, ``atol=1e-5, rtol=1e-4`` (STYLE.md), and the pass manager's
verification with the same bound. onnxruntime does not implement ``layout=1``; those cases are
checked against ``onnx.reference`` (the ONNX spec's own evaluator) at the same tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from edgec.errors import UnsupportedNodeError
from edgec.ir import EdgeGraph, op_sequence
from edgec.verify import random_inputs, run_onnx
from tests.helpers import FP32_ATOL, FP32_RTOL, assert_same_outputs, covers, make_model, run_pipeline

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ALLOWED = {
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Gather",
    "Slice",
    "Sigmoid",
    "Tanh",
    "Unsqueeze",
    "Concat",
    "Transpose",
}


def recurrent_model(
    op: str,
    direction: str = "forward",
    initial: bool = False,
    outputs: tuple[bool, ...] = (True, True, True),
    layout: int = 0,
    seq: int | str = 5,
    batch: int = 2,
    input_size: int = 3,
    hidden: int = 4,
    seed: int = 0,
    extra_inputs: dict[int, str] | None = None,
    initializers: dict[str, np.ndarray] | None = None,
    **attrs: object,
) -> onnx.ModelProto:
    """One ``op`` node with random weights; ``extra_inputs`` puts names at optional input slots."""
    rng = np.random.default_rng(seed)
    gates, dirs = GATES[op], 2 if direction == "bidirectional" else 1
    weights = {
        "W": (0.5 * rng.standard_normal((dirs, gates * hidden, input_size))).astype(np.float32),
        "R": (0.5 * rng.standard_normal((dirs, gates * hidden, hidden))).astype(np.float32),
        "B": (0.5 * rng.standard_normal((dirs, 2 * gates * hidden))).astype(np.float32),
        **(initializers or {}),
    }
    x_shape = [batch, seq, input_size] if layout else [seq, batch, input_size]
    state_shape = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    y_shape = [batch, seq, dirs, hidden] if layout else [seq, dirs, batch, hidden]
    inputs = {"X": (TensorProto.FLOAT, x_shape)}
    slots = ["X", "W", "R", "B", "", "", "", ""]
    if initial:
        inputs["h0"] = (TensorProto.FLOAT, state_shape)
        slots[5] = "h0"
        if op == "LSTM":
            inputs["c0"] = (TensorProto.FLOAT, state_shape)
            slots[6] = "c0"
    for slot, name in (extra_inputs or {}).items():
        slots[slot] = name
        if name not in weights:
            inputs[name] = (TensorProto.INT32, [batch])
    while slots[-1] == "":
        slots.pop()
    names = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    node_outputs = [name if wanted else "" for name, wanted in zip(names, outputs, strict=False)]
    while node_outputs and not node_outputs[-1]:
        node_outputs.pop()
    node_attrs = {"hidden_size": hidden, "direction": direction, **attrs}
    if layout:
        node_attrs["layout"] = 1
    node = helper.make_node(op, slots, node_outputs, name=f"{op.lower()}0", **node_attrs)
    graph_outputs = {n: (TensorProto.FLOAT, y_shape if n == "Y" else state_shape) for n in node_outputs if n}
    return make_model([node], inputs, graph_outputs, weights, opset=14 if layout else 13)


def _decompose(model: onnx.ModelProto, verify: bool = True) -> EdgeGraph:
    op = model.graph.node[0].op_type.lower()
    graph, records = run_pipeline(f"decompose-{op}", model, verify=verify)
    assert records[0].changed
    assert records[0].stats["decomposed"] == 1
    ops = set(op_sequence(graph))
    assert ops <= ALLOWED, ops - ALLOWED
    return graph


CASES = [
    (op, direction, initial, lbr)
    for op in ("LSTM", "GRU", "RNN")
    for direction in ("forward", "reverse", "bidirectional")
    for initial in (False, True)
    for lbr in ((0, 1) if op == "GRU" else (0,))
]


@covers("decompose-lstm", "decompose-gru", "decompose-rnn", kind="structural")
@covers("decompose-lstm", "decompose-gru", "decompose-rnn", kind="numeric")
@pytest.mark.parametrize(("op", "direction", "initial", "lbr"), CASES)
def test_decompose_matches_onnxruntime(op: str, direction: str, initial: bool, lbr: int) -> None:
    attrs = {"linear_before_reset": lbr} if op == "GRU" else {}
    model = recurrent_model(op, direction, initial, **attrs)
    graph = _decompose(model)
    assert op not in op_sequence(graph)
    assert_same_outputs(model, graph.to_onnx(), atol=FP32_ATOL, rtol=FP32_RTOL)


@pytest.mark.parametrize("outputs", [(True, False, False), (False, True, False), (False, False, True)])
def test_optional_outputs(outputs: tuple[bool, ...]) -> None:
    model = recurrent_model("LSTM", "bidirectional", True, outputs=outputs)
    graph = _decompose(model)
    assert [o.name for o in graph.outputs] == [o.name for o in model.graph.output]
    assert_same_outputs(model, graph.to_onnx())


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_layout_one_matches_reference(op: str) -> None:
    model = recurrent_model(op, "bidirectional", True, layout=1)
    graph = _decompose(model, verify=False)  # onnxruntime refuses layout=1, so verify by hand
    feeds = random_inputs(EdgeGraph.from_onnx(model), seed=1)
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = run_onnx(graph.to_onnx(), feeds)
    for output, reference in zip(model.graph.output, expected, strict=True):
        np.testing.assert_allclose(got[output.name], reference, atol=FP32_ATOL, rtol=FP32_RTOL)


def test_structure_of_one_step() -> None:
    graph = _decompose(recurrent_model("RNN", seq=1, outputs=(True, True)))
    # Zero initial state: the single step has no recurrent product.
    assert op_sequence(graph).count("MatMul") == 1
    assert op_sequence(graph).count("Tanh") == 1


def test_zero_peepholes_and_full_sequence_lens_are_accepted() -> None:
    model = recurrent_model(
        "LSTM",
        extra_inputs={4: "lens", 7: "P"},
        initializers={"P": np.zeros((1, 12), np.float32), "lens": np.full(2, 5, np.int32)},
    )
    graph = _decompose(model)
    assert_same_outputs(model, graph.to_onnx())


REFUSALS = [
    (
        recurrent_model("LSTM", extra_inputs={4: "lens"}),
        "LSTM with sequence_lens is not supported",
    ),
    (
        recurrent_model("LSTM", extra_inputs={7: "P"}, initializers={"P": np.ones((1, 12), np.float32)}),
        "peephole connections (non-zero P) are not supported",
    ),
    (recurrent_model("GRU", activations=["Sigmoid", "Relu"]), "custom activations"),
    (recurrent_model("RNN", clip=1.0), "cell clipping ('clip') is not supported"),
    (recurrent_model("LSTM", input_forget=1), "input_forget"),
    (recurrent_model("GRU", seq="T"), "symbolic sequence length"),
]


@covers("decompose-lstm", "decompose-gru", "decompose-rnn", kind="negative")
@pytest.mark.parametrize(("model", "message"), REFUSALS)
def test_refusals_name_the_node(model: onnx.ModelProto, message: str) -> None:
    op = model.graph.node[0].op_type
    with pytest.raises(UnsupportedNodeError) as info:
        run_pipeline(f"decompose-{op.lower()}", model, verify=False)
    assert info.value.node_name == f"{op.lower()}0"
    assert info.value.op_type == op
    assert message in str(info.value)
    assert str(info.value).startswith(f"{op} '{op.lower()}0': ")


def test_refusal_is_collected_in_check_mode() -> None:
    refusals: list[UnsupportedNodeError] = []
    graph, records = run_pipeline(
        "decompose-lstm", recurrent_model("LSTM", clip=3.0), verify=False, refusals=refusals
    )
    assert not records[0].changed
    assert op_sequence(graph) == ["LSTM"]
    assert [(e.node_name, e.op_type) for e in refusals] == [("lstm0", "LSTM")]


def test_other_ops_are_left_alone() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"x": (TensorProto.FLOAT, [2])},
        {"y": (TensorProto.FLOAT, [2])},
    )
    for op in ("lstm", "gru", "rnn"):
        graph, records = run_pipeline(f"decompose-{op}", model)
        assert not records[0].changed
        assert op_sequence(graph) == ["Relu"]


def _has_tvm_lowering() -> bool:
    try:
        from edgec.targets.tvm.frontend import import_onnx  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_tvm_lowering(), reason="TVM lowering (edgec.targets.tvm.frontend) not available")
def test_decomposed_lstm_lowers_through_tvm_and_matches_onnxruntime() -> None:
    import tvm
    from tvm import relax

    from edgec.targets.tvm.frontend import import_onnx

    model = recurrent_model("LSTM", "bidirectional", True, seq=4, hidden=8)
    decomposed = _decompose(model).to_onnx()
    module = import_onnx(decomposed)
    executable = tvm.compile(module, tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    feeds = random_inputs(EdgeGraph.from_onnx(model), seed=3)
    expected = run_onnx(model, feeds)
    args = [tvm.runtime.tensor(feeds[i.name], tvm.cpu()) for i in decomposed.graph.input]
    result = vm["main"](*args)
    values = [result] if hasattr(result, "numpy") else list(result)
    for output, value in zip(model.graph.output, values, strict=True):
        np.testing.assert_allclose(value.numpy(), expected[output.name], atol=FP32_ATOL, rtol=FP32_RTOL)
