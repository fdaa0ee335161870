"""Channels padded to whole vectors (targets/tvm/group_padding.py: ShuffleNet's narrow groups,
SqueezeNet's 1000 classes) and elementwise kernels vectorised at the widest dividing width
(targets/tvm/schedules.py ParallelVectorize), against onnxruntime on x86."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.ir import EdgeGraph
from edgec.targets.tvm.build import lower_for_cpu, optimize_for_cpu
from edgec.targets.tvm.translate import translate
from tests.targets.test_family_schedules import AVX512, _conv, _kernels

pytest.importorskip("tvm")


def _shuffle_unit(channels: int = 136, groups: int = 4, size: int = 14) -> onnx.ModelProto:
    """A ShuffleNet unit: grouped 1x1, ReLU, channel shuffle, depthwise 3x3, grouped 1x1, residual."""
    rng = np.random.default_rng(0)
    per = channels // groups

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [
        weight("w1", (channels, per, 1, 1)),
        weight("b1", (channels,)),
        weight("w2", (channels, 1, 3, 3)),
        weight("w3", (channels, per, 1, 1)),
        weight("b3", (channels,)),
        numpy_helper.from_array(np.array([1, groups, per, size, size], np.int64), "split"),
        numpy_helper.from_array(np.array([1, channels, size, size], np.int64), "merge"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], group=groups),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "split"], ["s1"]),
        helper.make_node("Transpose", ["s1"], ["s2"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["s2", "merge"], ["s3"]),
        helper.make_node("Conv", ["s3", "w2"], ["c2"], group=channels, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], group=groups),
        helper.make_node("Add", ["c3", "x"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "shuffle_unit",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_narrow_groups_compute_on_zero_filters_up_to_whole_vectors() -> None:
    # 34 output channels per group: 48 (three 16-lane vectors), with the bias and HardSwish fused.
    scripts = _kernels(_conv(136, 136, 14, 1, groups=4))
    (script,) = scripts.values()
    assert "T.Buffer((T.int64(1), T.int64(1), T.int64(34), T.int64(192)), " in script
    assert "T_multiply" in script and "T.vectorized(T.int64(16))" in script


def test_a_classifier_conv_with_a_few_channels_short_of_whole_vectors_computes_them_on_zero_filters() -> None:
    # SqueezeNet's last conv: 1000 classes are 62.5 vectors; 1008 (8 zero filters) tile with
    # 16-lane vectors instead of 8-lane ones (1.53 -> 0.88 ms).
    (script,) = _kernels(_conv(64, 1000, 13, 1)).values()
    assert "T.Buffer((T.int64(1), T.int64(1), T.int64(64), T.int64(1008)), " in script


@pytest.mark.parametrize(
    ("model", "memory_first"),
    [
        (_conv(64, 24, 14, 3), False),  # 24 channels: 8 zero filters would be a third more work
        (_conv(128, 128, 14, 1, groups=4), False),  # 32 channels per group: whole vectors already
        (_conv(136, 136, 14, 3, groups=136), False),  # depthwise: its own schedule
        (_conv(136, 136, 14, 1, groups=4), True),  # under a RAM budget the padding costs memory
    ],
)
def test_groups_are_not_padded_where_it_would_not_pay(model: onnx.ModelProto, memory_first: bool) -> None:
    module = lower_for_cpu(translate(EdgeGraph.from_onnx(model)), AVX512, memory_first)
    assert not [gv for gv in module.functions if "strided_slice" in gv.name_hint]


def _two_convs_concatenated(first: int, second: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    shapes = [(first, 8), (second, 8), (8, first + second)]  # the last conv keeps the concat NHWC
    inits = [
        numpy_helper.from_array(rng.standard_normal((*shape, 1, 1)).astype(np.float32), f"w{i}")
        for i, shape in enumerate(shapes)
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"]),
        helper.make_node("Conv", ["x", "w1"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 28, 28])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("first", "second", "lanes"), [(24, 112, 8), (64, 64, 16)])
def test_elementwise_kernels_take_the_widest_vector_that_divides_their_channels(first, second, lanes) -> None:
    # ShuffleNet's 24 + 112 = 136 channels: 8-lane vectors (its concat ran scalar: 0.49 -> 0.05 ms).
    module = optimize_for_cpu(translate(EdgeGraph.from_onnx(_two_convs_concatenated(first, second))), AVX512)
    (script,) = [f.script() for gv, f in module.functions.items() if "concatenate" in gv.name_hint]
    assert f"T.vectorized(T.int64({lanes}))" in script


def test_elementwise_kernels_with_no_wide_vector_dividing_their_channels_stay_scalar() -> None:
    module = optimize_for_cpu(translate(EdgeGraph.from_onnx(_two_convs_concatenated(3, 7))), AVX512)
    (script,) = [f.script() for gv, f in module.functions.items() if "concatenate" in gv.name_hint]
    assert "T.vectorized" not in script and "T.parallel" in script


def test_shuffle_unit_with_padded_groups_matches_onnxruntime_on_x86(tmp_path: Path) -> None:
    path = tmp_path / "unit.onnx"
    onnx.save_model(_shuffle_unit(), str(path))
    result = edgec.compile(path, tmp_path / "build")
    error = result.manifest["error"]["artifact_vs_original"]
    assert error["max_abs"] < 1e-4 and error["cosine"] > 0.99999
