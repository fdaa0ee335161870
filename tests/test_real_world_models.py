"""Patterns from third-party exports, compiled for x86 through the Python API (``edgec.compile``).

Each model is built with onnx.helper as exporters write it: a Reshape whose target is computed at
run time from the input's shape (with a symbolic batch that ``input_shapes`` fixes), a GRU
sequence classifier as PyTorch exports it (``linear_before_reset=1``), a bidirectional LSTM tagger,
and a ``Loop`` with a constant trip count. Every build must match onnxruntime on the original
model twice: the manifest's own measurement (random inputs, seed 0) and an independent run of the
artifact with ``run_build`` on other inputs.

Numeric bound: fp32, ``max_abs <= 1e-5`` in the manifest; ``atol=1e-5, rtol=1e-4`` for the
independent run (STYLE.md, lossless fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.compile import compile_model
from edgec.config import CompileOptions
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.run import run_build
from edgec.verify import random_inputs, run_onnx
from tests.helpers import FP32_ATOL, FP32_RTOL, make_model
from tests.passes.test_control_flow import loop_model

F = TensorProto.FLOAT


def exported_reshape_model(seed: int = 0) -> onnx.ModelProto:
    """A conv classifier whose flatten is ``x.view(x.size(0), -1)`` as exporters write it.

    ``Reshape(r, Concat(Unsqueeze(Gather(Shape(r), 0)), [-1]))`` and a second runtime reshape,
    ``view(n, c, h * w)``, built from ``Gather`` of dims 0 and 1 and a ``Mul`` of dims 2 and 3;
    the batch dimension ``N`` is symbolic.
    """
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        # view(n, c, h * w) → softmax over positions (a spatial attention map) → view back
        helper.make_node("Shape", ["r"], ["r_shape"], name="shape"),
        helper.make_node("Gather", ["r_shape", "i0"], ["n"], name="gather_n", axis=0),
        helper.make_node("Gather", ["r_shape", "i1"], ["ch"], name="gather_c", axis=0),
        helper.make_node("Gather", ["r_shape", "i2"], ["h"], name="gather_h", axis=0),
        helper.make_node("Gather", ["r_shape", "i3"], ["w"], name="gather_w", axis=0),
        helper.make_node("Mul", ["h", "w"], ["hw"], name="mul_hw"),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"], name="unsqueeze_n"),
        helper.make_node("Unsqueeze", ["ch", "axis0"], ["c1"], name="unsqueeze_c"),
        helper.make_node("Unsqueeze", ["hw", "axis0"], ["hw1"], name="unsqueeze_hw"),
        helper.make_node("Concat", ["n1", "c1", "hw1"], ["nc_hw"], name="concat_view", axis=0),
        helper.make_node("Reshape", ["r", "nc_hw"], ["positions"], name="view"),
        helper.make_node("Softmax", ["positions"], ["attention"], name="softmax", axis=2),
        helper.make_node("Reshape", ["attention", "r_shape"], ["attention_map"], name="view_back"),
        helper.make_node("Mul", ["r", "attention_map"], ["weighted"], name="weight"),
        # x.view(x.size(0), -1)
        helper.make_node("Shape", ["weighted"], ["w_shape"], name="shape_flat"),
        helper.make_node("Gather", ["w_shape", "i0"], ["batch"], name="gather_batch", axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"], name="unsqueeze_batch"),
        helper.make_node("Concat", ["batch1", "minus_one"], ["flat_shape"], name="concat_flat", axis=0),
        helper.make_node("Reshape", ["weighted", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    initializers = {
        "conv_w": (0.3 * rng.standard_normal((4, 3, 3, 3))).astype(np.float32),
        "conv_b": (0.1 * rng.standard_normal(4)).astype(np.float32),
        "fc_w": (0.2 * rng.standard_normal((5, 4 * 6 * 6))).astype(np.float32),
        "fc_b": (0.1 * rng.standard_normal(5)).astype(np.float32),
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
        "i2": np.array(2, np.int64),
        "i3": np.array(3, np.int64),
        "axis0": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
    }
    return make_model(
        nodes,
        {"x": (F, ["N", 3, 6, 6])},
        {"logits": (F, ["N", 5])},
        initializers,
        name="exported_reshape",
    )


def sequence_classifier(
    op: str, direction: str = "forward", seq: int = 8, input_size: int = 6, hidden: int = 12, seed: int = 0
) -> onnx.ModelProto:
    """``op`` (GRU/LSTM/RNN) over ``[seq, 1, input_size]``, mean over time, a Gemm head → 3 logits.

    GRU uses ``linear_before_reset=1`` as PyTorch exports it; the LSTM/GRU get no initial state
    (zeros), as in a non-streaming classifier.
    """
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs = 2 if direction == "bidirectional" else 1
    attrs = {"hidden_size": hidden, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    nodes = [
        helper.make_node(op, ["x", "W", "R", "B"], ["y"], name=op.lower(), **attrs),
        # [seq, dirs, 1, H] → [seq, 1, dirs, H] → [seq, 1, dirs*H], as torch's output layout
        helper.make_node("Transpose", ["y"], ["y_t"], name="to_batch_major", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["y_t", "features_shape"], ["features"], name="merge_directions"),
        helper.make_node("ReduceMean", ["features"], ["pooled"], name="mean_over_time", axes=[0], keepdims=0),
        helper.make_node("Gemm", ["pooled", "head_w", "head_b"], ["logits"], name="head", transB=1),
    ]
    initializers = {
        "W": (0.4 * rng.standard_normal((dirs, gates * hidden, input_size))).astype(np.float32),
        "R": (0.4 * rng.standard_normal((dirs, gates * hidden, hidden))).astype(np.float32),
        "B": (0.2 * rng.standard_normal((dirs, 2 * gates * hidden))).astype(np.float32),
        "features_shape": np.array([seq, 1, dirs * hidden], np.int64),
        "head_w": (0.3 * rng.standard_normal((3, dirs * hidden))).astype(np.float32),
        "head_b": (0.1 * rng.standard_normal(3)).astype(np.float32),
    }
    return make_model(
        nodes,
        {"x": (F, [seq, 1, input_size])},
        {"logits": (F, [1, 3])},
        initializers,
        opset=13,  # ReduceMean with axes as an attribute
        name=f"{op.lower()}_{direction}",
    )


@dataclass(frozen=True)
class Case:
    """A model, the compile options it needs, and what must be gone after the import path."""

    name: str
    model: onnx.ModelProto
    input_shapes: dict[str, tuple[int, ...]]
    removed_ops: tuple[str, ...]


def cases() -> list[Case]:
    """The models of this module (the coverage benchmark and the docs table use them too)."""
    return [
        Case(
            "exported-reshape", exported_reshape_model(), {"x": (2, 3, 6, 6)}, ("Shape", "Gather", "Concat")
        ),
        Case("gru", sequence_classifier("GRU"), {}, ("GRU",)),
        Case("bidirectional-lstm", sequence_classifier("LSTM", "bidirectional"), {}, ("LSTM",)),
        Case("loop", loop_model(4), {}, ("Loop",)),
    ]


def _compile_and_compare(case: Case, tmp_path: Path) -> dict:
    path = tmp_path / f"{case.name}.onnx"
    onnx.save_model(case.model, str(path))
    options = CompileOptions(target="x86", input_shapes=case.input_shapes)
    result = compile_model(path, tmp_path / "build", options)
    manifest = result.manifest
    assert result.ok, manifest["status"]
    assert manifest["error"]["artifact_vs_original"]["max_abs"] <= FP32_ATOL, manifest["error"]
    ops = {node.op_type for node in onnx.load(str(tmp_path / "build" / "optimized.onnx")).graph.node}
    assert not ops & set(case.removed_ops), ops

    # Independent check: other inputs, run through run_build (what `edgec run` does).
    graph = EdgeGraph.from_onnx(case.model)
    for tensor in graph.inputs:
        if tensor.name in case.input_shapes:
            tensor.shape = list(case.input_shapes[tensor.name])
    feeds = random_inputs(graph, seed=11)
    np.savez(tmp_path / "inputs.npz", **feeds)
    got, _ = run_build(tmp_path / "build", tmp_path / "inputs.npz")
    expected = run_onnx(case.model, feeds)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=FP32_ATOL, rtol=FP32_RTOL, err_msg=name)
    return manifest


def _case(name: str) -> Case:
    return next(case for case in cases() if case.name == name)


def test_runtime_reshape_chain_with_symbolic_batch(tmp_path: Path) -> None:
    manifest = _compile_and_compare(_case("exported-reshape"), tmp_path)
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [2, 3, 6, 6]}]
    assert manifest["outputs"][0]["shape"] == [2, 5]
    simplify = manifest["passes"][0]
    assert simplify["name"] == "simplify" and simplify["changed"]
    assert simplify["stats"]["removed"]["Shape"] == 2 and simplify["stats"]["removed"]["Gather"] == 5


def test_gru_sequence_classifier(tmp_path: Path) -> None:
    manifest = _compile_and_compare(_case("gru"), tmp_path)
    decomposed = next(p for p in manifest["passes"] if p["name"] == "decompose-gru")
    assert decomposed["stats"]["nodes"] == [{"node": "gru", "steps": 8, "directions": 1}]


def test_bidirectional_lstm_tagger(tmp_path: Path) -> None:
    manifest = _compile_and_compare(_case("bidirectional-lstm"), tmp_path)
    decomposed = next(p for p in manifest["passes"] if p["name"] == "decompose-lstm")
    assert decomposed["stats"]["nodes"] == [{"node": "lstm", "steps": 8, "directions": 2}]


def test_loop_with_constant_trip_count(tmp_path: Path) -> None:
    manifest = _compile_and_compare(_case("loop"), tmp_path)
    unrolled = next(p for p in manifest["passes"] if p["name"] == "unroll-loops")
    assert unrolled["stats"]["loops"] == [{"node": "loop0", "trips": 4}]
    assert [o["shape"] for o in manifest["outputs"]] == [[2, 3], [4, 2, 3]]


def test_symbolic_batch_without_input_shapes_is_refused(tmp_path: Path) -> None:
    """Negative: the same export without ``input_shapes`` is refused by name before any build."""
    path = tmp_path / "exported.onnx"
    onnx.save_model(_case("exported-reshape").model, str(path))
    with pytest.raises(EdgecError, match=r"input 'x' has a symbolic or unknown shape \(Nx3x6x6\)"):
        compile_model(path, tmp_path / "build", CompileOptions(target="x86"))
    assert not (tmp_path / "build").exists()
