"""SMLAD kernels for int8 conv2d/dense on Cortex-M4/M7/M55 (``edgec.targets.tvm.arm_dsp``, and
``arm_dsp_im2col`` for few input channels): the DSP instructions are in the M4 image and not in
the M3 one, layers that do not fit fall back to the plain schedule, and the results equal the x86
integer build bit for bit."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgec
from edgec.ir import EdgeGraph
from edgec.targets import get_target
from edgec.targets.tvm.arm_dsp import has_dsp, weight_permutation
from edgec.targets.tvm.arm_dsp_im2col import im2col_refusal, im2col_weight, padded_reduction
from tests.helpers import DIGITS, make_model, rng
from tests.targets.cortex_helpers import build, needs_tools

tvm = pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def digits_qdq(tmp_path_factory) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("qdq") / "digits_int8.onnx"
    edgec.optimize(
        DIGITS / "digits_cnn.onnx", path, pipeline="default,quantize", calib=DIGITS / "digits_calib.npz"
    )
    return onnx.load(str(path))


def _odd_shapes_fp32() -> onnx.ModelProto:
    """Convolutions on both sides of the rule's limits: 3 input channels (falls back), 8 -> 12 on an
    odd 7-wide map (one-column tiles), 12 -> 5 1x1 (odd output channels: falls back), a stride-2
    12 -> 8; then global average pools, an 8 -> 10 Gemm (SMLAD) plus a 5 -> 10 one (falls back)."""
    r = rng(3)

    def w(*shape: int) -> np.ndarray:
        return (r.standard_normal(shape) * 0.4).astype(np.float32)

    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("Conv", ["r2", "w3", "b3"], ["c3"]),
        node("GlobalAveragePool", ["c3"], ["g3"]),
        node("Flatten", ["g3"], ["f3"]),
        node("Gemm", ["f3", "wg", "bg"], ["y3"], transB=1),
        node("Conv", ["r2", "w4", "b4"], ["c4"], strides=[2, 2]),
        node("Relu", ["c4"], ["r4"]),
        node("GlobalAveragePool", ["r4"], ["g4"]),
        node("Flatten", ["g4"], ["f4"]),
        node("Gemm", ["f4", "wf", "bf"], ["y4"], transB=1),
        node("Add", ["y3", "y4"], ["y"]),
    ]
    init = {
        "w1": w(8, 3, 3, 3), "b1": w(8), "w2": w(12, 8, 3, 3), "b2": w(12), "w3": w(5, 12, 1, 1),
        "b3": w(5), "wg": w(10, 5), "bg": w(10), "w4": w(8, 12, 3, 3), "b4": w(8), "wf": w(10, 8),
        "bf": w(10),
    }  # fmt: skip
    return make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, 3, 7, 7])},
        {"y": (TensorProto.FLOAT, [1, 10])},
        init,
        name="odd_shapes",
    )


@pytest.fixture(scope="module")
def odd_qdq(tmp_path_factory) -> onnx.ModelProto:
    folder = tmp_path_factory.mktemp("odd")
    model, calib = folder / "odd.onnx", folder / "calib.npz"
    onnx.save(_odd_shapes_fp32(), str(model))
    np.savez(calib, x=rng(5).standard_normal((16, 1, 3, 7, 7)).astype(np.float32))
    edgec.optimize(model, folder / "odd_int8.onnx", pipeline="default,quantize", calib=calib)
    return onnx.load(str(folder / "odd_int8.onnx"))


def _dsp_kernels(model: onnx.ModelProto, target: str, layout=weight_permutation) -> dict[str, list[int]]:
    """Kernel name -> shape of the weight a rule re-laid out (``layout`` reads which, by default the
    SMLAD rule's), for the lowered module."""
    chosen = get_target(target)
    module = chosen.lower(chosen.legalize(EdgeGraph.from_onnx(model)).graph).module
    found = {}
    for gv, func in module.functions.items():
        if permutation := layout(func):
            (index,) = permutation
            found[gv.name_hint] = [int(d) for d in func.params[index].shape]
    return found


def test_cores_with_the_dsp_extension_have_the_dsp_rule() -> None:
    assert has_dsp(get_target("cortex-m4").tvm_target())
    assert has_dsp(get_target("cortex-m7").tvm_target())
    assert has_dsp(get_target("cortex-m55").tvm_target())  # Helium implies the DSP extension
    assert not has_dsp(get_target("cortex-m3").tvm_target())
    assert not has_dsp(get_target("cortex-a53").tvm_target())
    # Armv8.1-M without a named Helium core or +dsp: the extension is optional there.
    assert not has_dsp({"kind": "llvm", "mtriple": "thumbv8.1m.main-none-eabi"})
    off = dataclasses.replace(get_target("cortex-m4"), micro_kernels=False)
    assert get_target("cortex-m4").capabilities().int8_micro_kernel == "smlad"
    assert off.capabilities().int8_micro_kernel is None


def test_digits_convolutions_and_dense_take_the_smlad_rule(digits_qdq) -> None:
    kernels = _dsp_kernels(digits_qdq, "cortex-m4")
    # conv2 (16 -> 32) and conv3 (32 -> 32) as HWOI, the classifier as W^T (10 x 32); conv1 has
    # one input channel and takes the im2col rule.
    assert sorted(kernels.values()) == [[3, 3, 32, 16], [3, 3, 32, 32], [10, 32]]
    assert _dsp_kernels(digits_qdq, "cortex-m3") == {}


def test_layers_that_do_not_fit_fall_back(odd_qdq) -> None:
    kernels = _dsp_kernels(odd_qdq, "cortex-m4")
    # 8 -> 12 (odd width), stride-2 12 -> 8 and the Gemm; not 3 -> 8 (3 input channels: the
    # im2col rule's) nor 12 -> 5 (odd output channels: no rule's).
    assert sorted(kernels.values()) == [[3, 3, 8, 12], [3, 3, 12, 8], [10, 8]]
    assert sorted(_dsp_kernels(odd_qdq, "cortex-m4", im2col_weight).values()) == [[8, 27]]


def test_first_convolutions_take_smlad_through_im2col(digits_qdq) -> None:
    # conv1: 3x3 on one channel, 16 outputs: the weight as 16 rows of the 9-value window; the
    # kernel pads the window to 12 (three SMLAD words) with zeros.
    assert sorted(_dsp_kernels(digits_qdq, "cortex-m4", im2col_weight).values()) == [[16, 9]]
    assert padded_reduction(9) == 12 and padded_reduction(27) == 28
    assert _dsp_kernels(digits_qdq, "cortex-m3", im2col_weight) == {}


@pytest.mark.parametrize(
    ("extents", "conv", "reason"),
    [
        ((1, 8, 8, 16, 1, 1, 1), True, "a 1x1x1 window pads 1 -> 4 multiply-adds"),
        ((1, 8, 8, 16, 1, 1, 2), True, "a 1x1x2 window pads 2 -> 4 multiply-adds"),
        ((1, 8, 8, 16, 3, 3, 8), True, "8 input channels: the channel-innermost SMLAD rule takes it"),
        ((1, 8, 8, 5, 3, 3, 1), True, "5 output channels: the 2-channel tile needs an even number"),
        ((4, 16, 9), False, "a matmul: its reduction is already contiguous"),
    ],
)
def test_im2col_rule_refuses_with_a_reason(extents: tuple[int, ...], conv: bool, reason: str) -> None:
    assert im2col_refusal(extents, conv) == reason
    assert im2col_refusal((1, 8, 8, 16, 3, 3, 1), True) is None  # digits' conv1 fits


def _disassemble(path: Path) -> str:
    return subprocess.run(
        ["arm-none-eabi-objdump", "-d", str(path)], capture_output=True, text=True, check=True
    ).stdout


@needs_tools("arm-none-eabi-gcc", "arm-none-eabi-objdump")
def test_m4_kernels_use_smlad_and_m3_kernels_do_not(digits_qdq, tmp_path: Path) -> None:
    build("cortex-m4", digits_qdq, tmp_path / "m4", "digits")
    build("cortex-m3", digits_qdq, tmp_path / "m3", "digits")
    m4 = _disassemble(tmp_path / "m4" / "digits_kernels.o")
    m3 = _disassemble(tmp_path / "m3" / "digits_kernels.o")
    assert len(re.findall(r"\bsmlad\b", m4)) >= 64 and re.search(r"\bsxtb16\b", m4)
    assert not re.search(r"\b(smlad|sxtb16)\b", m3)
    # Every convolution and dense kernel, conv1 with its single input channel included.
    bodies = dict(
        re.findall(r"^[0-9a-f]+ <(\w+(?:conv2d|matmul)\w*_compute_)>:\n(.*?)(?=^\S|\Z)", m4, re.M | re.S)
    )
    assert len(bodies) == 4 and all(re.search(r"\bsmlad\b", body) for body in bodies.values()), sorted(bodies)


def _run(target: str, build_dir: Path, manifest: dict, samples: list[np.ndarray]) -> list[np.ndarray]:
    """Every output, over all samples in one batched run."""
    return get_target(target).run(build_dir, manifest, [np.stack(samples)])[0]


@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7", "cortex-m55"])
def test_smlad_kernels_equal_the_x86_integer_build(odd_qdq, target: str, tmp_path: Path) -> None:
    # Inputs 4x the calibration range: activations saturate at -128/127, the extreme products.
    samples = [(rng(s).standard_normal((1, 3, 7, 7)) * 4).astype(np.float32) for s in range(3)]
    _, manifest = build("x86", odd_qdq, tmp_path / "x86", "odd")
    expected = _run("x86", tmp_path / "x86", manifest, samples)
    _, manifest = build(target, odd_qdq, tmp_path / target, "odd")
    got = _run(target, tmp_path / target, manifest, samples)
    for want, have in zip(expected, got, strict=True):
        for a, b in zip(want, have, strict=True):
            np.testing.assert_array_equal(b, a)
