"""Fixtures shared by the target tests."""

from __future__ import annotations

import onnx
import pytest

import edgec
from tests.helpers import DIGITS
from tests.targets.cortex_helpers import int8_qdq, mixed_channels_model


@pytest.fixture(scope="module")
def edgec_digits_qdq(tmp_path_factory) -> onnx.ModelProto:
    """The digits CNN quantized to int8 QDQ by edgec's own ``quantize`` pass (minmax, 200 images)."""
    path = tmp_path_factory.mktemp("qdq") / "digits_int8.onnx"
    edgec.optimize(
        DIGITS / "digits_cnn.onnx", path, pipeline="default,quantize", calib=DIGITS / "digits_calib.npz"
    )
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def mixed_qdq() -> onnx.ModelProto:
    """:func:`tests.targets.cortex_helpers.mixed_channels_model` quantized by edgec."""
    return int8_qdq(mixed_channels_model())
