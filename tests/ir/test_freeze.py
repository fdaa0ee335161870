"""Frozen inputs: parsing ``NAME=VALUE`` and turning graph inputs into checked constants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, freeze_inputs, parse_freeze
from edgec.verify import run_onnx
from tests.helpers import make_model


def two_input_model(
    rate_shape: list[int] | None = None, rate_type: int = TensorProto.INT64
) -> onnx.ModelProto:
    """``y = x * Cast(rate) + table`` with inputs x [2,3], rate (scalar) and table [2,3]."""
    nodes = [
        helper.make_node("Cast", ["rate"], ["rate_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "rate_f"], ["scaled"]),
        helper.make_node("Add", ["scaled", "table"], ["y"]),
    ]
    return make_model(
        nodes,
        {
            "x": (TensorProto.FLOAT, [2, 3]),
            "rate": (rate_type, [] if rate_shape is None else rate_shape),
            "table": (TensorProto.FLOAT, [2, 3]),
        },
        {"y": (TensorProto.FLOAT, [2, 3])},
    )


def _graph(model: onnx.ModelProto) -> EdgeGraph:
    return EdgeGraph.from_onnx(onnx.ModelProto.FromString(model.SerializeToString()))


@pytest.mark.parametrize(
    ("spec", "value"),
    [("sr=16000", 16000), ("gain=1.5", 1.5), ("flag=true", True), ("flag=False", False), (" a = -3 ", -3)],
)
def test_parse_scalars(spec: str, value: object) -> None:
    name, parsed = parse_freeze(spec)
    assert name == spec.split("=")[0].strip()
    assert parsed == value and type(parsed) is type(value)


def test_parse_npy_and_npz(tmp_path: Path) -> None:
    table = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "t.npy", table)
    np.savez(tmp_path / "one.npz", anything=table)
    np.savez(tmp_path / "many.npz", table=table, other=table * 2)
    assert np.array_equal(parse_freeze(f"table={tmp_path / 't.npy'}")[1], table)
    assert np.array_equal(parse_freeze(f"table={tmp_path / 'one.npz'}")[1], table)
    assert np.array_equal(parse_freeze(f"table={tmp_path / 'many.npz'}")[1], table)
    with pytest.raises(EdgecError, match=r"holds the arrays \['table', 'other'\]; store one named 'x'"):
        parse_freeze(f"x={tmp_path / 'many.npz'}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sr", "bad --freeze-input 'sr': write NAME=VALUE"),
        ("=3", "write NAME=VALUE"),
        ("sr=fast", "is neither a number, true/false, nor a .npy/.npz file"),
        ("sr=missing.npy", "file 'missing.npy' does not exist"),
    ],
)
def test_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(EdgecError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_freeze(spec)


def test_freeze_scalar_and_array_matches_feeding_them() -> None:
    model = two_input_model()
    graph = _graph(model)
    table = np.full((2, 3), 0.25, np.float32)
    record = freeze_inputs(graph, {"rate": 3, "table": table})
    assert [t.name for t in graph.inputs] == ["x"]
    assert json.loads(json.dumps(record)) == {"rate": 3, "table": table.tolist()}
    constant = next(t for t in graph.tensors().values() if t.name == "rate")
    assert (
        isinstance(constant, gs.Constant)
        and constant.values.dtype == np.int64
        and constant.values.shape == ()
    )
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    expected = run_onnx(model, {"x": x, "rate": np.array(3, np.int64), "table": table})
    np.testing.assert_allclose(run_onnx(graph.to_onnx(), {"x": x})["y"], expected["y"], atol=1e-6)


def test_scalar_freezes_a_shape_one_input() -> None:
    graph = _graph(two_input_model(rate_shape=[1]))
    freeze_inputs(graph, {"rate": 7})
    constant = next(t for t in graph.tensors().values() if t.name == "rate")
    assert constant.values.shape == (1,)


def test_scalar_is_cast_to_the_input_dtype() -> None:
    graph = _graph(two_input_model(rate_type=TensorProto.FLOAT))
    assert freeze_inputs(graph, {"rate": 2}) == {"rate": 2.0}


def test_frozen_input_read_inside_an_if_branch() -> None:
    branch = helper.make_graph(
        [helper.make_node("Cast", ["rate"], ["r"], to=TensorProto.FLOAT)],
        "then",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [])],
    )
    model = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        {"c": (TensorProto.BOOL, []), "rate": (TensorProto.INT64, [])},
        {"y": (TensorProto.FLOAT, [])},
    )
    graph = _graph(model)
    freeze_inputs(graph, {"rate": 5})
    got = run_onnx(graph.to_onnx(), {"c": np.array(True)})["y"]
    assert float(got) == 5.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"sample_rate": 1},
            "--freeze-input names 'sample_rate', but the model's inputs are ['x', 'rate', 'table']",
        ),
        ({"rate": 1.5}, "input 'rate' is int64; 1.5 is not an integer"),
        ({"rate": 2**70}, "out of its range"),
        (
            {"table": np.zeros((2, 3), np.float64)},
            "input 'table' is float32, but the frozen array is float64",
        ),
        (
            {"table": np.zeros((3, 2), np.float32)},
            "input 'table' has shape [2, 3], but the frozen array has shape [3, 2]",
        ),
        ({"table": 1.0}, "a single value only freezes a scalar input"),
        (
            {"x": np.zeros((2, 3), np.float32), "rate": 1, "table": np.zeros((2, 3), np.float32)},
            "would freeze every input of the model",
        ),
    ],
)
def test_freeze_errors(values: dict[str, object], message: str) -> None:
    graph = _graph(two_input_model())
    before = graph.text()
    with pytest.raises(EdgecError) as info:
        freeze_inputs(graph, values)
    assert message in str(info.value)
    assert graph.text() == before  # nothing half-frozen


def test_bool_input_refuses_a_number() -> None:
    graph = _graph(two_input_model(rate_type=TensorProto.BOOL))
    with pytest.raises(EdgecError, match="input 'rate' is bool; freeze it with true or false, not 3"):
        freeze_inputs(graph, {"rate": 3})
    assert freeze_inputs(graph, {"rate": True}) == {"rate": True}
