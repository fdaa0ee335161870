"""Small digits data and an untrained student for the training tests (few epochs, few samples)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

from edgec.data import load_dataset
from edgec.ir import EdgeGraph, infer_shapes, load
from tests.helpers import DIGITS

sys.path.insert(0, str(DIGITS))
from students import student_cnn


def student_graph(seed: int = 0) -> EdgeGraph:
    graph = EdgeGraph.from_onnx(student_cnn((8, 16), seed=seed))
    infer_shapes(graph)
    return graph


@pytest.fixture(scope="session")
def teacher() -> EdgeGraph:
    return load(DIGITS / "digits_cnn.onnx")


@pytest.fixture(scope="session")
def digits(teacher) -> dict[str, dict[str, np.ndarray]]:
    """640 training samples and 120 test samples (``[N, 1, 1, 8, 8]`` inputs, labels)."""
    train = load_dataset(DIGITS / "digits_train.npz", teacher, labelled=True).arrays()
    test = load_dataset(DIGITS / "digits_test.npz", teacher, labelled=True).arrays()
    return {
        "train": {k: v[:640] for k, v in train.items()},
        "test": {k: v[:120] for k, v in test.items()},
    }


@pytest.fixture
def student_path(tmp_path):
    path = tmp_path / "student.onnx"
    onnx.save_model(student_cnn((4, 8), seed=0), str(path))
    return path
