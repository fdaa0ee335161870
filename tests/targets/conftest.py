"""Fixtures shared by the target tests."""

from __future__ import annotations

import onnx
import pytest

import edgec
from tests.helpers import DIGITS


@pytest.fixture(scope="module")
def edgec_digits_qdq(tmp_path_factory) -> onnx.ModelProto:
    """The digits CNN quantized to int8 QDQ by edgec's own ``quantize`` pass (minmax, 200 images)."""
    path = tmp_path_factory.mktemp("qdq") / "digits_int8.onnx"
    edgec.optimize(
        DIGITS / "digits_cnn.onnx", path, pipeline="default,quantize", calib=DIGITS / "digits_calib.npz"
    )
    return onnx.load(str(path))
