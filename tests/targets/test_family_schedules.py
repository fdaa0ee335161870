"""Default CPU schedules for the model families (targets/tvm/tiled_schedules.py): depthwise
convolutions, tiles of whole native vectors, batched matmuls; and the family builders
(edgec/families.py) compiled for x86 against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.errors import EdgecError
from edgec.families import attention_recognizer, family_model, mobilenet, yolo
from edgec.ir import EdgeGraph
from edgec.targets.tvm.build import optimize_for_cpu
from edgec.targets.tvm.schedule_common import CpuVectorInfo
from edgec.targets.tvm.tiled_schedules import Conv2dNHWC, DepthwiseConv2dNHWC, GroupedConv2dNHWC
from edgec.targets.tvm.translate import translate

tvm = pytest.importorskip("tvm")

AVX512 = {"kind": "llvm", "mcpu": "x86-64-v4"}
AVX512_INFO = CpuVectorInfo(lanes=16, registers=32, max_accumulators=24)


def _conv(cin: int, cout: int, size: int, k: int, groups: int = 1, stride: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, cin // groups, k, k)) * 0.2).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    out = (size + 2 * (k // 2) - k) // stride + 1
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w", "b"],
            ["c"],
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            group=groups,
            strides=[stride] * 2,
        ),
        helper.make_node("HardSwish", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _kernels(model: onnx.ModelProto, target: dict = AVX512) -> dict[str, str]:
    """Scripts of the scheduled conv/matmul kernels of ``model``."""
    module = optimize_for_cpu(translate(EdgeGraph.from_onnx(model)), target)
    return {
        gv.name_hint: func.script()
        for gv, func in module.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc) and ("conv" in gv.name_hint or "matmul" in gv.name_hint)
    }


def test_depthwise_conv_is_register_tiled_with_its_activation_fused() -> None:
    (script,) = _kernels(_conv(240, 240, 14, 5, groups=240)).values()
    assert "group_conv2d_nhwc_update" in script  # the reduction got an init: the tile rule ran
    assert "T.vectorized(T.int64(16))" in script and "T.unroll" in script and "T.parallel" in script
    assert "T_multiply" in script  # HardSwish computed in the same kernel


def test_grouped_conv_with_several_channels_per_group_is_left_to_the_fallback() -> None:
    model = _conv(16, 16, 8, 3, groups=4)
    module = translate(EdgeGraph.from_onnx(model))
    with tvm.target.Target(AVX512):
        from edgec.targets.tvm.weight_fusion import zero_pipeline

        module = tvm.relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(module)
        module = zero_pipeline()(module)
    (func,) = [f for gv, f in module.functions.items() if "conv" in gv.name_hint]
    assert DepthwiseConv2dNHWC(AVX512_INFO).apply(func, tvm.target.Target(AVX512), False) is None


def _grouped_kernel(model: onnx.ModelProto) -> tvm.tirx.PrimFunc:
    """The unscheduled conv kernel of ``model``, as Relax legalizes it for the default rules."""
    from edgec.targets.tvm.build import lower_for_cpu

    module = lower_for_cpu(translate(EdgeGraph.from_onnx(model)), AVX512)
    (func,) = [f for gv, f in module.functions.items() if "conv" in gv.name_hint]
    return func


@pytest.mark.parametrize(("cin", "cout", "k", "groups"), [(272, 272, 1, 4), (64, 128, 3, 8)])
def test_grouped_conv_is_register_tiled_within_a_group(cin: int, cout: int, k: int, groups: int) -> None:
    # ShuffleNet's grouped 1x1 (68 channels per group) and a ResNeXt-style grouped 3x3.
    scripts = _kernels(_conv(cin, cout, 7, k, groups=groups))
    (script,) = scripts.values()
    # The register tile (unrolled columns and channel vectors), not the fallback's vector loop.
    assert "group_conv2d_nhwc_update" in script and "T.unroll" in script and "T.vectorized(" in script
    assert "T_multiply" in script  # HardSwish computed in the same kernel
    rule = GroupedConv2dNHWC(AVX512_INFO)
    func = _grouped_kernel(_conv(cin, cout, 7, k, groups=groups))
    assert rule.apply(func, tvm.target.Target(AVX512), False) is not None


def test_grouped_conv_rule_leaves_depthwise_and_plain_convs_alone() -> None:
    rule, target = GroupedConv2dNHWC(AVX512_INFO), tvm.target.Target(AVX512)
    assert rule.apply(_grouped_kernel(_conv(64, 64, 8, 3, groups=64)), target, False) is None
    assert rule.apply(_grouped_kernel(_conv(64, 64, 8, 3)), target, False) is None


@pytest.mark.parametrize(("cin", "cout", "k", "groups"), [(136, 136, 1, 4), (24, 48, 3, 3)])
def test_grouped_conv_matches_onnxruntime_on_x86(cin, cout, k, groups, tmp_path: Path) -> None:
    path = tmp_path / "grouped.onnx"
    onnx.save_model(_conv(cin, cout, 14, k, groups=groups), str(path))
    result = edgec.compile(path, tmp_path / "build")
    error = result.manifest["error"]["artifact_vs_original"]
    assert error["max_abs"] < 1e-4 and error["cosine"] > 0.99999


def test_channel_tiles_are_whole_native_vectors() -> None:
    rule = Conv2dNHWC(AVX512_INFO)
    assert rule.vector_width(576) == 16 and rule.vector_width(72) == 8 and rule.vector_width(97) == 1
    for width, channels in [(7, 576), (56, 72), (14, 288), (13, 1000)]:
        wi, oc = rule.pick_tiles(width, channels)
        assert width % wi == 0 and channels % oc == 0 and oc % rule.vector_width(channels) == 0
    # A 1x1 conv's accumulators are 16-lane vectors, never one 48-lane vector LLVM spills.
    (script,) = _kernels(_conv(96, 576, 7, 1)).values()
    assert "T.vectorized(T.int64(16))" in script and "T.vectorized(T.int64(48))" not in script


def test_late_conv_tiles_use_each_weight_vector_for_several_columns() -> None:
    # 14 columns, 256 channels: 7 x 2 vectors (each weight vector feeds 7 FMAs), not 2 x 8 vectors
    # (16 accumulators, but weights streamed from L2 twice as often: half the speed).
    assert Conv2dNHWC(AVX512_INFO).pick_tiles(14, 256) == (7, 32)
    assert Conv2dNHWC(AVX512_INFO).pick_tiles(13, 1000) == (13, 8)


def test_conv_whose_weights_overflow_l2_walks_its_input_channels_in_chunks() -> None:
    (script,) = _kernels(_conv(256, 256, 14, 3)).values()
    # 8 chunks of 32 input channels outside the rows, columns and window; the epilogue after them.
    assert "for rc_0, yy, xx_0, ry, rx, rc_1 in T.grid(T.int64(8), T.int64(14)" in script
    assert script.index("rc_0 * T.int64(32) + rc_1") < script.index("T.max(")


@pytest.mark.parametrize(
    ("cin", "size"),
    [(256, 56), (48, 7)],  # input outweighs weights; input channels split into no whole chunks
)
def test_conv_reduction_is_not_chunked_when_it_would_not_pay(cin: int, size: int) -> None:
    (script,) = _kernels(_conv(cin, 256, size, 3)).values()
    assert "rc_0" not in script and "T.vectorized(T.int64(16))" in script


def test_conv_with_chunked_input_channels_matches_onnxruntime_on_x86(tmp_path: Path) -> None:
    path = tmp_path / "late.onnx"
    onnx.save_model(_conv(256, 128, 7, 3), str(path))
    result = edgec.compile(path, tmp_path / "build")
    error = result.manifest["error"]["artifact_vs_original"]
    assert error["max_abs"] < 1e-3 and error["cosine"] > 0.99999


def _softmax(shape: list[int], axis: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=axis)],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _softmax_schedule(model: onnx.ModelProto) -> tvm.s_tir.Schedule | None:
    from edgec.targets.tvm.build import tuning_module
    from edgec.targets.tvm.softmax_schedule import SoftmaxOverOuterAxis

    module = tuning_module(translate(EdgeGraph.from_onnx(model)), AVX512)
    (func,) = [f for gv, f in module.functions.items() if gv.name_hint.startswith("softmax")]
    with tvm.target.Target(AVX512):
        return SoftmaxOverOuterAxis(AVX512_INFO).apply(func, tvm.target.Target(AVX512), False)


def test_softmax_over_an_outer_axis_runs_rows_in_parallel_with_columns_in_vectors() -> None:
    # YOLOv8's DFL softmax: 16 bins x 4 sides x anchors, over the bins.
    schedule = _softmax_schedule(_softmax([1, 16, 4, 2048], axis=1))
    assert schedule is not None
    script = schedule.mod.script()
    assert "T.parallel(T.int64(4))" in script  # one task per side, not one per bin
    # The max's bins loop outside a 16-lane vector of anchors (dlight put it inside, scalar).
    assert "for ax1, ax0_0 in T.grid(T.int64(16), T.int64(128)):" in script
    # Max, sum (initialisation and update), exponentials and quotients: all 16-lane vectors.
    assert script.count("T.vectorized(T.int64(16))") == 6


def test_softmax_over_the_innermost_axis_is_left_to_dlight() -> None:
    assert _softmax_schedule(_softmax([1, 4, 2048, 16], axis=3)) is None


def test_softmax_over_an_outer_axis_matches_onnxruntime_on_x86(tmp_path: Path) -> None:
    path = tmp_path / "dfl.onnx"
    onnx.save_model(_softmax([1, 16, 4, 2100], axis=1), str(path))
    result = edgec.compile(path, tmp_path / "build")
    error = result.manifest["error"]["artifact_vs_original"]
    assert error["max_abs"] < 1e-6 and error["cosine"] > 0.999999


def test_attention_matmuls_are_register_tiled() -> None:
    model = attention_recognizer(height=16, width=32, dim=32, heads=2, blocks=1, classes=8)
    scripts = _kernels(model)
    # Q @ K^T and P @ V: 1 x heads x 8 x 16 operands.
    batched = [s for n, s in scripts.items() if "matmul" in n and "T.Buffer((T.int64(1), T.int64(2)," in s]
    assert len(batched) == 2, sorted(scripts)
    for script in batched:
        assert "matmul_update" in script and "T.vectorized(" in script and "T.unroll" in script


def _dense(rows: int, depth: int, cols: int) -> onnx.ModelProto:
    """``x @ W + b`` with constant weights: a classifier head of ``cols`` classes over ``rows`` steps."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((depth, cols)) * 0.2).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, depth])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_matmul_with_an_odd_column_count_is_tiled_over_zero_padded_columns() -> None:
    # A CTC head: 97 classes (prime, no whole vector divides them) over 80 time steps.
    (script,) = _kernels(_dense(80, 128, 97)).values()
    # W padded to 112 columns (7 AVX-512 vectors), register tiles of 16-lane vectors, and the
    # epilogue writes only the 97 real columns.
    assert "T.sblock_alloc_buffer((T.int64(128), T.int64(112)))" in script
    assert "matmul_update" in script and "T.vectorized(T.int64(16))" in script
    assert "< T.int64(97)" in script


def test_matmul_with_an_odd_column_count_and_few_rows_is_not_padded() -> None:
    # One row: copying W to pad it would cost as much as the product itself.
    (script,) = _kernels(_dense(1, 128, 97)).values()
    assert "T.int64(112)" not in script


def test_matmul_with_an_odd_column_count_matches_onnxruntime_on_x86(tmp_path: Path) -> None:
    path = tmp_path / "dense.onnx"
    onnx.save_model(_dense(80, 128, 97), str(path))
    result = edgec.compile(path, tmp_path / "build")
    error = result.manifest["error"]["artifact_vs_original"]
    assert error["max_abs"] < 1e-4 and error["cosine"] > 0.99999


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("mobilenet", lambda: mobilenet(size=64, width=0.5, classes=40)),
        (
            "recognizer",
            lambda: attention_recognizer(height=16, width=64, dim=32, heads=2, blocks=1, classes=9),
        ),
        ("yolo", lambda: yolo(size=64, width=8, classes=5)),
    ],
)
def test_family_models_match_onnxruntime_on_x86(name, model, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model(), str(path))
    result = edgec.compile(path, tmp_path / "build")
    error = result.manifest["error"]["artifact_vs_original"]
    assert error["max_abs"] < 1e-3 and error["cosine"] > 0.99999


def test_family_model_names_a_family() -> None:
    assert family_model("recognizer").graph.name == "recognizer"
    with pytest.raises(EdgecError, match="no model family 'resnet'; available: mobilenet, recognizer, yolo"):
        family_model("resnet")
