"""The TVM targets' legalization (issue 15, item 2) and the new integer kinds.

``group-qdq`` (targets/legalize/group_qdq.py): QDQ groups become ``edgec`` integer nodes whose
parameters are attributes and constant inputs (structural: the printed legal graph), they compute
what the numpy reference of those nodes computes, bit for bit in TVM and within one output step of
onnxruntime on the QDQ graph (numeric), and a group the target cannot run stays float with its
reason (negative). The legalization is visible: ``--dump-after``, ``edgec check`` and the manifest
see its passes. The new kinds: integer ``Mul`` (hard-swish) and ``Conv`` 1-D (as 2-D, unit height).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec.ir import EdgeGraph, op_sequence
from edgec.targets.integer.reference import run_reference
from edgec.targets.legalize.group_qdq import refusals
from edgec.verify import run_onnx
from tests.helpers import covers, legalize, run_pipeline
from tests.targets.kws_model import FEATURES, FRAMES, write_kws

tvm = pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def kws_qdq(tmp_path_factory) -> onnx.ModelProto:
    """The KWS model quantized by edgec for x86 (its MatMuls of two activations stay float)."""
    folder = tmp_path_factory.mktemp("kws")
    model, calib = write_kws(folder)
    edgec.optimize(model, folder / "kws_int8.onnx", target="x86", quantize="int8", calib=calib)
    return onnx.load(str(folder / "kws_int8.onnx"))


def _samples(count: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, FEATURES, FRAMES)).astype(np.float32) for _ in range(count)]


def _output_step(model: onnx.ModelProto) -> float:
    graph = EdgeGraph.from_onnx(model)
    dq = graph.outputs[0].inputs[0]
    assert dq.op == "DequantizeLinear"
    return float(dq.inputs[1].values)


@covers("group-qdq", kind="structural")
def test_group_qdq_writes_self_describing_integer_nodes(kws_qdq):
    graph, records = run_pipeline("group-qdq", kws_qdq, verify=False)
    text = graph.text()
    # The Conv1d: a 2-D integer convolution of unit height, parameters as attributes and constants.
    conv = re.search(r"= edgec\.IntegerConv\((.*)\) \{(.*)\}  # conv1\n", text)
    assert conv is not None, text
    assert "@conv1_weight" in conv.group(1) and "int8[16,8,1,3]" in conv.group(1)
    assert "int32[16]" in conv.group(1)  # bias, multiplier, shift: one per output channel
    assert "pads=[0,1,0,1]" in conv.group(2) and "replaces='Conv'" in conv.group(2)
    assert "rounding='single'" in conv.group(2)
    assert re.search(r"= edgec\.IntegerMul\(.*\{.*multiplier=\d+.*\}  # hs_mul\n", text)
    # What stays float: the attention (its MatMuls, the Softmax), between dequantize and quantize.
    kinds = Counter(node.op for node in graph.nodes if node.domain == "edgec")
    assert kinds == {
        "IntegerQuantize": 2, "IntegerConv": 2, "IntegerAdd": 1, "IntegerRescale": 1, "IntegerMul": 2,
        "IntegerDequantize": 3, "IntegerMatMul": 1,
    }  # fmt: skip
    standard = [op for op in op_sequence(graph) if op not in kinds]
    assert Counter(standard) == {"Transpose": 1, "MatMul": 2, "Softmax": 1, "Flatten": 1}
    assert records[0].stats["groups"] == 9 and records[0].stats["boundary"] == 5


@covers("group-qdq", kind="numeric")
def test_legal_graph_computes_what_tvm_builds_and_onnxruntime_within_a_step(kws_qdq):
    from tvm import relax

    from edgec.targets.tvm.translate import translate

    legal = legalize(kws_qdq)
    vm = relax.VirtualMachine(tvm.compile(translate(legal), "llvm"), tvm.cpu())
    step = _output_step(kws_qdq)
    # With verification on, the pass reports its own error against the QDQ graph.
    _, (record,) = run_pipeline("group-qdq", kws_qdq, verify=True)
    assert 0 <= record.stats["max_abs_error_vs_qdq"] <= 2 * step + 1e-6
    for x in _samples(4):
        want = run_reference(legal, {"x": x})["y"]
        got = vm["main"](tvm.runtime.tensor(x))
        np.testing.assert_array_equal((got if hasattr(got, "numpy") else got[0]).numpy(), want)
        qdq = run_onnx(kws_qdq, {"x": x})["y"]
        assert np.max(np.abs(want - qdq)) <= 2 * step + 1e-6


def test_integer_mul_and_conv1d_kernels_match_their_reference_exactly(kws_qdq):
    """Each new kind alone: the TVM build of the legal graph up to its output equals its numpy
    reference (saturating inputs, 4x the calibration range, so both clamps are exercised)."""
    from tvm import relax

    from edgec.targets.tvm.translate import translate

    legal = legalize(kws_qdq)
    names = ("conv1", "conv2", "hs_mul", "hs_scale")
    cut = legal.copy()
    tensors = cut.tensors()
    cut.gs.outputs = [tensors[legal.node(name).outputs[0].name] for name in names]
    cut.cleanup()
    vm = relax.VirtualMachine(tvm.compile(translate(cut), "llvm"), tvm.cpu())
    for x in _samples(3, seed=11):
        x = x * 4
        want = run_reference(cut, {"x": x})
        got = [value.numpy() for value in vm["main"](tvm.runtime.tensor(x))]
        for name, tensor, value in zip(names, cut.outputs, got, strict=True):
            assert value.dtype == np.int8 and want[tensor.name].dtype == np.int8
            np.testing.assert_array_equal(value, want[tensor.name], err_msg=name)
    assert min(int(want[t.name].min()) for t in cut.outputs) == -128  # the clamps bite


@covers("group-qdq", kind="negative")
def test_refused_groups_stay_float_with_their_reason(kws_qdq):
    graph = EdgeGraph.from_onnx(kws_qdq)
    # A group group-qdq must refuse: per-channel output quantization of the classifier.
    q = graph.outputs[0].inputs[0].inputs[0].inputs[0]
    assert q.op == "QuantizeLinear"
    q.inputs[1] = graph.add_constant("per_channel_scale", np.full(10, float(q.inputs[1].values), np.float32))
    collected: list = []  # as edgec check collects them: the quantize pass planned fc as int8
    legal, (record,) = run_pipeline("group-qdq", graph.to_onnx(), verify=False, refusals=collected)
    reason = f"its output quantization (QuantizeLinear '{q.name}') is per-channel; only per-tensor is lowered"
    assert {"node": "fc", "op": "Gemm", "reason": reason} in record.stats["refused"]
    assert refusals(legal)["fc"] == reason and legal.node("fc").op == "Gemm"
    assert [(error.node_name, error.op_type) for error in collected] == [("fc", "Gemm")]
    assert str(collected[0]).startswith("Gemm 'fc': it was quantized as int8, but the target cannot")
    # The refused Gemm's int8 weight is still a DequantizeLinear of its int8 constant: pack-weights
    # keeps it at 8 bits for the float kernel.
    packed, (packing,) = run_pipeline("pack-weights", legal.to_onnx(), verify=False)
    assert packing.stats["packed"] == 1 and "PackedDequantize" in op_sequence(packed)


def test_legalization_is_recorded_and_dumped(tmp_path: Path, cli):
    """Dropout is removed by cleanup's eliminate-identity and the 3-input Sum split by split-sum
    inside the target's legalization; the manifest records them and ``--dump-after group-qdq``
    prints the legal graph."""
    from onnx import TensorProto, helper

    from tests.helpers import make_model
    from tests.test_cli import invoke

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Dropout", ["c"], ["d"], name="drop"),
        helper.make_node("Sum", ["d", "d", "d"], ["y"], name="triple"),
    ]
    model = make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, 2, 5, 5])},
        {"y": (TensorProto.FLOAT, [1, 3, 3, 3])},
        {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32)},
    )
    path = tmp_path / "drop.onnx"
    onnx.save(model, str(path))
    # No user pipeline (its cleanup would remove the Dropout first): the legalization alone.
    args = ["-p", "", "--no-simplify", "--dump-after", "group-qdq"]
    result = invoke(cli, "compile", path, "-o", tmp_path / "build", *args)
    assert result.exit_code == 0, result.stderr
    dump = result.stderr[result.stderr.index("// ----- after group-qdq -----") :]
    assert "Dropout" not in dump and dump.count(" = Add(") == 2 and "# triple\n" in dump
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    records = {record["name"]: record for record in manifest["legalization"]}
    assert records["eliminate-identity"]["stats"]["applied"] == {"dropout": 1}
    assert records["split-sum"]["stats"]["split"] == 1
    built = manifest["precision"]
    assert "drop" not in built and built["triple"] == {
        "op": "Add",
        "precision": "float32",
        "kernel": "relax frontend",
    }
    assert built["conv"]["precision"] == "float32" and "reason" not in built["conv"]  # a float build
