"""quantization-sensitivity: a ranked table, graph untouched; errors without data."""

from __future__ import annotations

import pytest

from edgec.errors import EdgecError
from tests.helpers import covers, run_pipeline
from tests.passes.quantization.models import digits, normal_samples


@covers("quantization-sensitivity", kind="structural")
def test_sensitivity_structure_leaves_graph_alone():
    model, calibration, _ = digits()
    graph, records = run_pipeline("quantization-sensitivity", model, calibration=calibration)
    assert not records[0].changed
    assert graph.text().count("BatchNormalization") == 3  # analysis only: nothing folded
    table = records[0].stats["table"]
    assert [row["node"] for row in table][:1] and {row["node"] for row in table} == {
        "conv1",
        "conv2",
        "conv3",
        "fc",
        "gap",
    }
    assert "layer" in records[0].stats["text"].splitlines()[0]


@covers("quantization-sensitivity", kind="numeric")
def test_sensitivity_ranks_and_bounds():
    """Each single-layer error is below the all-int8 error (0.0191) and the table is sorted."""
    model, calibration, test = digits()
    _, records = run_pipeline("quantization-sensitivity{metric=error}", model, calibration=calibration)
    metrics = [row["metric"] for row in records[0].stats["table"]]
    assert metrics == sorted(metrics, reverse=True)
    assert metrics[-1] > 0 and metrics[0] < 0.0191 * 1.01
    _, records = run_pipeline("quantization-sensitivity", model, calibration=calibration, evaluation=test)
    assert records[0].stats["metric"] == "accuracy"
    assert all(abs(row["metric"]) <= 0.005 for row in records[0].stats["table"])


@covers("quantization-sensitivity", kind="negative")
def test_sensitivity_needs_data():
    model, _, _ = digits()
    with pytest.raises(EdgecError, match="calibration data"):
        run_pipeline("quantization-sensitivity", model)
    with pytest.raises(EdgecError, match="labelled evaluation data"):
        run_pipeline("quantization-sensitivity{metric=accuracy}", model, calibration=normal_samples(model, 2))
