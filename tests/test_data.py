"""Datasets in .npz: single input sets, sample-axis datasets, labels, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgec.data import Dataset, declared_batch, load_dataset, load_inputs
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
    assert data.runs["x"].shape == (5, 1, 3, 8, 8) and list(data.runs) == ["x"]
    assert data.samples == 5 and data.batch == 1 and list(data.labels) == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "b.npz", x=stacked[:, None])  # explicit sample axis
    assert load_dataset(tmp_path / "b.npz", graph).runs["x"].shape == (5, 1, 3, 8, 8)
    np.savez(tmp_path / "c.npz", x=stacked[:1])  # one sample without a sample axis
    assert load_dataset(tmp_path / "c.npz", graph).runs["x"].shape == (1, 1, 3, 8, 8)
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


# ----- a declared dynamic batch fixed by --input-shape ---------------------------------------------


def _fixed_batch_graph(batch: int) -> tuple[EdgeGraph, int | None]:
    """The convnet declared with a symbolic batch ``N``, then fixed to ``batch`` as compile does."""
    from edgec.ir import fix_input_shapes

    graph = EdgeGraph.from_onnx(conv_bn_relu_model(batch="N"))
    declared = {t.name: t.shape for t in graph.inputs}
    fix_input_shapes(graph, {"x": (batch, 3, 8, 8)})
    return graph, declared_batch(declared, graph)


def test_samples_fill_runs_of_the_declared_batch(tmp_path: Path) -> None:
    """7 images for batch 4: two runs, the last completed by repeating images 0 and 1."""
    graph, batch = _fixed_batch_graph(4)
    assert batch == 4
    images = np.random.default_rng(0).standard_normal((7, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=images, label=np.arange(7))
    data = load_dataset(tmp_path / "d.npz", graph, labelled=True, batch=batch)
    assert data.runs["x"].shape == (2, 4, 3, 8, 8)
    assert data.describe() == {"samples": 7, "batch": 4, "runs": 2, "repeated": 1}
    np.testing.assert_array_equal(data.runs["x"][1, 3], images[0])
    # Outputs of repeated rows are dropped: one row per sample, in order.
    per_row = data.runs["x"].sum(axis=(2, 3, 4))
    np.testing.assert_array_equal(data.rows(per_row), images.sum(axis=(1, 2, 3)))
    head = data.head(2)
    assert head.runs["x"].shape == (1, 4, 3, 8, 8) and head.samples == 2 and list(head.labels) == [0, 1]
    np.testing.assert_array_equal(head.runs["x"][0, 2:], images[:2])
    # Whole runs are accepted too: 2 runs of 4 are 8 samples.
    np.savez(tmp_path / "runs.npz", x=data.runs["x"])
    assert load_dataset(tmp_path / "runs.npz", graph, batch=batch).describe()["samples"] == 8


def test_declared_batch_needs_a_symbolic_leading_axis_on_every_input() -> None:
    _, batch = _fixed_batch_graph(1)
    assert batch == 1  # a batch of 1 keeps the usual layouts
    static = EdgeGraph.from_onnx(conv_bn_relu_model(batch=2))
    assert declared_batch({t.name: t.shape for t in static.inputs}, static) is None


def test_rows_refuse_an_output_without_the_batch_axis() -> None:
    data = Dataset({"x": np.zeros((1, 4, 3, 8, 8), np.float32)}, samples=3, batch=4)
    with pytest.raises(EdgecError, match="leading axis must be that batch"):
        data.rows(np.zeros((1, 10), np.float32), "output 'loss'")


def test_declared_batch_errors(tmp_path: Path) -> None:
    graph, batch = _fixed_batch_graph(4)
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 3, 7, 8), np.float32))
    with pytest.raises(EdgecError, match=r"expected N rows of \[3, 8, 8\] \(batch 4\)"):
        load_dataset(tmp_path / "d.npz", graph, batch=batch)
    np.savez(tmp_path / "e.npz", x=np.zeros((3, 3, 8, 8), np.float32), label=np.arange(4))
    with pytest.raises(EdgecError, match="different sample counts"):
        load_dataset(tmp_path / "e.npz", graph, labelled=True, batch=batch)
