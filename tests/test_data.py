"""Datasets in .npz: single input sets, sample-axis datasets, labels, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgec.data import load_dataset, load_inputs, samples_of
from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from tests.conftest import conv_bn_relu_model


@pytest.fixture
def graph() -> EdgeGraph:
    return EdgeGraph.from_onnx(conv_bn_relu_model())


def test_dataset_layouts(graph: EdgeGraph, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stacked = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)  # batch-1 samples on the batch axis
    np.savez(tmp_path / "a.npz", x=stacked, label=np.arange(5))
    data = load_dataset(tmp_path / "a.npz", graph, labelled=True)
    assert data["x"].shape == (5, 1, 3, 8, 8) and list(samples_of(data, graph)) == ["x"]
    np.savez(tmp_path / "b.npz", x=stacked[:, None])  # explicit sample axis
    assert load_dataset(tmp_path / "b.npz", graph)["x"].shape == (5, 1, 3, 8, 8)
    np.savez(tmp_path / "c.npz", x=stacked[:1])  # one sample without a sample axis
    assert load_dataset(tmp_path / "c.npz", graph)["x"].shape == (1, 1, 3, 8, 8)
    assert load_inputs(tmp_path / "c.npz", graph)["x"].shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("arrays", "labelled", "fragment"),
    [
        ({"x": np.zeros((0, 3, 8, 8), np.float32)}, False, "no samples"),
        ({"x": np.zeros((2, 3, 8, 8), np.float32)}, True, "no 'label'"),
        ({"x": np.zeros((2, 3, 8, 8), np.float32), "label": np.zeros(3)}, True, "different sample counts"),
        ({"x": np.full((2, 3, 8, 8), np.nan, np.float32)}, False, "NaN"),
        ({"x": np.zeros((2, 3, 7, 8), np.float32)}, False, "expected N samples"),
        ({"y": np.zeros((2, 3, 8, 8), np.float32)}, False, "missing ['x']"),
    ],
)
def test_dataset_errors(graph: EdgeGraph, tmp_path: Path, arrays, labelled: bool, fragment: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(EdgecError) as error:
        load_dataset(tmp_path / "d.npz", graph, labelled=labelled)
    assert fragment in str(error.value)


def test_unreadable_files(graph: EdgeGraph, tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgecError, match=r"not a readable \.npz"):
        load_inputs(tmp_path / "junk.npz", graph)
    with pytest.raises(EdgecError, match="does not exist"):
        load_inputs(tmp_path / "none.npz", graph)
