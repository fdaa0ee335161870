"""Fixtures shared by the target tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgec
from tests.helpers import DIGITS, rng
from tests.targets.cortex_helpers import mixed_channels_model


@pytest.fixture(scope="module")
def edgec_digits_qdq(tmp_path_factory) -> onnx.ModelProto:
    """The digits CNN quantized to int8 QDQ by edgec's own ``quantize`` pass (minmax, 200 images)."""
    path = tmp_path_factory.mktemp("qdq") / "digits_int8.onnx"
    edgec.optimize(
        DIGITS / "digits_cnn.onnx", path, pipeline="default,quantize", calib=DIGITS / "digits_calib.npz"
    )
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def mixed_qdq(tmp_path_factory) -> onnx.ModelProto:
    """:func:`tests.targets.cortex_helpers.mixed_channels_model` quantized by edgec (16 samples)."""
    folder = tmp_path_factory.mktemp("mixed")
    model, calib = folder / "mixed.onnx", folder / "calib.npz"
    onnx.save(mixed_channels_model(), str(model))
    np.savez(calib, x=rng(5).standard_normal((16, 1, 3, 7, 7)).astype(np.float32))
    edgec.optimize(model, folder / "mixed_int8.onnx", pipeline="default,quantize", calib=calib)
    return onnx.load(str(folder / "mixed_int8.onnx"))
