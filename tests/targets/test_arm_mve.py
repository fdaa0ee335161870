"""Helium kernels for int8 conv2d/dense on Cortex-M55 (``edgec.targets.tvm.arm_mve``): which layers
take ``VMLADAVA.S8`` and which fall back to SMLAD, the instruction in the image, and the outputs
equal to the x86 integer build bit for bit under qemu."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec.ir import EdgeGraph
from edgec.targets import get_target
from edgec.targets.tvm.arm_dsp import weight_permutation
from edgec.targets.tvm.arm_dsp_im2col import im2col_weight
from edgec.targets.tvm.arm_mve import has_mve, mve_weight_permutation
from tests.helpers import DIGITS, rng
from tests.targets.cortex_helpers import build, mobilenet_block_model, needs_tools

tvm = pytest.importorskip("tvm")


def _kernels(model: onnx.ModelProto, target: str) -> tuple[dict[str, list[list[int]]], dict]:
    """``{rule: sorted weight shapes it re-laid out}`` and the lowering's ``micro_kernels`` count."""
    chosen = get_target(target)
    lowered = chosen.lower(chosen.legalize(EdgeGraph.from_onnx(model)).graph)
    found: dict[str, list[list[int]]] = {"vmladava": [], "smlad": [], "im2col": []}
    layouts = {"vmladava": mve_weight_permutation, "smlad": weight_permutation, "im2col": im2col_weight}
    for func in lowered.module.functions.values():
        for rule, layout in layouts.items():
            if permutation := layout(func):
                (index,) = permutation
                found[rule].append([int(d) for d in func.params[index].shape])
    return {rule: sorted(shapes) for rule, shapes in found.items()}, lowered.details["micro_kernels"]


def test_only_helium_cores_have_the_mve_rule() -> None:
    assert has_mve(get_target("cortex-m55").tvm_target())
    for name in ("cortex-m3", "cortex-m4", "cortex-m7", "cortex-a53"):
        assert not has_mve(get_target(name).tvm_target()), name
    assert not has_mve({"kind": "llvm", "mtriple": "thumbv8.1m.main-none-eabi"})  # MVE is optional
    assert has_mve({"kind": "llvm", "mtriple": "thumbv8.1m.main-none-eabi", "mattr": ["+mve"]})
    assert get_target("cortex-m55").capabilities().int8_micro_kernel == "vmladava"


def test_digits_layers_with_16k_input_channels_take_vmladava(edgec_digits_qdq) -> None:
    kernels, built = _kernels(edgec_digits_qdq, "cortex-m55")
    # conv2 (16 -> 32, fused with its pool) and conv3 (32 -> 32) as HWOI, the dense layer as W^T;
    # conv1 (one input channel) through the SMLAD im2col rule.
    assert kernels == {
        "vmladava": [[3, 3, 32, 16], [3, 3, 32, 32], [10, 32]],
        "smlad": [],
        "im2col": [[16, 9]],
    }
    assert built == {"smlad": 1, "vmladava": 3}
    assert _kernels(edgec_digits_qdq, "cortex-m4")[0]["vmladava"] == []


@pytest.fixture(scope="module")
def mobilenet_qdq(tmp_path_factory) -> onnx.ModelProto:
    folder = tmp_path_factory.mktemp("mobilenet")
    onnx.save(mobilenet_block_model(), str(folder / "fp32.onnx"))
    np.savez(folder / "calib.npz", x=rng(5).standard_normal((16, 1, 3, 16, 16)).astype(np.float32))
    edgec.optimize(
        folder / "fp32.onnx", folder / "int8.onnx", pipeline="default,quantize", calib=folder / "calib.npz"
    )
    return onnx.load(str(folder / "int8.onnx"))


def test_reductions_not_a_multiple_of_16_fall_back_to_smlad(mobilenet_qdq) -> None:
    kernels, _ = _kernels(mobilenet_qdq, "cortex-m55")
    # The pointwise 8 -> 16 conv has 8 input channels: SMLAD, not Helium; the dense layer reads
    # 16: Helium. The 3-channel first conv: im2col. The depthwise conv: neither (plain loops).
    assert kernels == {"vmladava": [[10, 16]], "smlad": [[1, 1, 16, 8]], "im2col": [[8, 27]]}


@needs_tools("arm-none-eabi-gcc", "llvm-objdump")
def test_m55_image_has_vmladava_in_its_convolutions(edgec_digits_qdq, tmp_path: Path) -> None:
    build("cortex-m55", edgec_digits_qdq, tmp_path, "digits")
    listing = subprocess.run(
        [
            "llvm-objdump",
            "-d",
            "--triple=thumbv8.1m.main-none-eabihf",
            "--mcpu=cortex-m55",
            str(tmp_path / "digits_kernels.o"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bodies = dict(
        re.findall(r"^[0-9a-f]+ <(\w+(?:conv2d|matmul)\w*_compute_)>:\n(.*?)(?=^\S|\Z)", listing, re.M | re.S)
    )
    with_mve = sorted(name for name, body in bodies.items() if re.search(r"\bvmlava\.s8\b", body))
    assert len(bodies) == 4 and len(with_mve) == 3, sorted(bodies)


@pytest.mark.slow
@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
def test_m55_int8_equals_the_x86_integer_build(edgec_digits_qdq, tmp_path: Path) -> None:
    samples = np.load(DIGITS / "digits_test.npz")["input"][:4, None]
    _, manifest = build("x86", edgec_digits_qdq, tmp_path / "x86", "digits")
    expected = get_target("x86").run(tmp_path / "x86", manifest, [samples])[0][0]
    _, manifest = build("cortex-m55", edgec_digits_qdq, tmp_path / "m55", "digits")
    got = get_target("cortex-m55").run(tmp_path / "m55", manifest, [samples])[0][0]
    np.testing.assert_array_equal(got, expected)
