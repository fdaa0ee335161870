"""AArch64 int8 micro-kernels (``edgec.targets.tvm.arm_neon``): ``sdot`` on cores with the
dot-product extension (cortex-a55/a76), ``smull`` + ``sadalp`` on every core (cortex-a53/a72 and
what sdot declines); layers that fit neither keep the plain schedule, ``--no-micro-kernels``
removes both, and every build equals the numpy integer reference bit for bit under qemu-aarch64."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager
from edgec.targets import get_target
from edgec.targets.integer.reference import run_reference
from edgec.targets.tvm.arm_neon import has_dotprod, is_aarch64
from edgec.targets.tvm.build import micro_kernels_built
from edgec.targets.tvm.int8_dot import weight_layout
from edgec.targets.tvm.target import legalization
from tests.helpers import instructions_per_kernel, legalize, rng
from tests.targets.cortex_helpers import build, needs_tools

tvm = pytest.importorskip("tvm")

DOT_PRODUCT = ("cortex-a55", "cortex-a76")
ARMV8_0 = ("cortex-a53", "cortex-a72")


def _lowered(model: onnx.ModelProto, target: str, micro_kernels: bool = True, pad_channels: bool = True):
    chosen = dataclasses.replace(get_target(target), micro_kernels=micro_kernels)
    graph = EdgeGraph.from_onnx(model)
    if pad_channels:
        return chosen.lower(chosen.legalize(graph).graph).module
    # The target's legalization without pad-channels: what each rule takes of the layers as they are.
    ctx = PassContext(capabilities=chosen.capabilities())
    return chosen.lower(PassManager(legalization(chosen.requantize_rounding), ctx).run(graph).graph).module


def test_dot_product_cores_declare_sdot_and_armv8_0_cores_sadalp() -> None:
    for name in DOT_PRODUCT:
        target = get_target(name)
        assert has_dotprod(target.tvm_target()) and target.capabilities().int8_micro_kernel == "sdot"
    for name in ARMV8_0:
        target = get_target(name)
        assert is_aarch64(target.tvm_target()) and not has_dotprod(target.tvm_target())
        assert target.capabilities().int8_micro_kernel == "sadalp"
    for name in ("x86-64-v3", "cortex-m4", "c"):
        assert not is_aarch64(get_target(name).tvm_target())
        assert not has_dotprod(get_target(name).tvm_target())
    off = dataclasses.replace(get_target("cortex-a55"), micro_kernels=False)
    assert off.capabilities().int8_micro_kernel is None
    a76 = get_target("cortex-a76")
    assert a76.qemu_cpu == "cortex-a76" and a76.capabilities().fp16_arithmetic


def test_each_layer_takes_the_kernel_it_fits(mixed_qdq) -> None:
    # Unpadded: 16 -> 12 and the Gemm (reductions of 16 and 8) take sdot, the reduction of 6 falls
    # to sadalp; 3 -> 16 and 12 -> 6 keep the plain schedule.
    assert micro_kernels_built(_lowered(mixed_qdq, "cortex-a55", pad_channels=False)) == {
        "sadalp": 1,
        "sdot": 2,
    }
    assert micro_kernels_built(_lowered(mixed_qdq, "cortex-a53", pad_channels=False)) == {"sadalp": 3}
    # The targets' own legalization pads 3 (and, for sdot, 6) input channels: only 12 -> 6 is left.
    a55 = _lowered(mixed_qdq, "cortex-a55")
    assert micro_kernels_built(a55) == {"sdot": 4}
    assert micro_kernels_built(_lowered(mixed_qdq, "cortex-a53")) == {"sadalp": 4}
    # 16 input channels: the lane-indexed form (4 sdot per 16 channels, weights [r/16, c/4, 4, 4, 4]).
    layouts = sorted(value for f in a55.functions.values() for value in weight_layout(f).values())
    assert layouts == [[4, 4], [4, 4], [4, 4], [4, 4, 4]]
    assert micro_kernels_built(_lowered(mixed_qdq, "cortex-a55", micro_kernels=False)) == {}


def test_machine_code_has_sdot_only_where_the_core_has_it(mixed_qdq) -> None:
    a55 = get_target("cortex-a55").tvm_target()
    a53 = get_target("cortex-a53").tvm_target()
    a55_module = _lowered(mixed_qdq, "cortex-a55")
    sdot = instructions_per_kernel(a55_module, a55, "sdot")
    assert len(sdot) == 4 and min(sdot.values()) >= 4, sdot
    # The 16-channel layer multiplies by input lanes (sdot v.4s, v.16b, v.4b[q]).
    lane = instructions_per_kernel(a55_module, a55, r"sdot\s+v\d+\.4s,\s*v\d+\.16b,\s*v\d+\.4b\[[0-3]")
    assert len(lane) == 1 and min(lane.values()) >= 4, lane
    a53_module = _lowered(mixed_qdq, "cortex-a53")
    assert instructions_per_kernel(a53_module, a53, "sdot") == {}
    assert len(instructions_per_kernel(a53_module, a53, "sadalp")) == 4
    assert len(instructions_per_kernel(a53_module, a53, "smull")) >= 4
    plain = _lowered(mixed_qdq, "cortex-a55", micro_kernels=False)
    assert instructions_per_kernel(plain, a55, "sdot") == {}
    assert instructions_per_kernel(plain, a55, "sadalp") == {}


@needs_tools("aarch64-linux-gnu-gcc", "qemu-aarch64-static")
@pytest.mark.parametrize("target", ["cortex-a55", "cortex-a53", "cortex-a76"])
def test_micro_kernels_equal_the_integer_reference_under_qemu(mixed_qdq, target: str, tmp_path: Path) -> None:
    # Inputs 4x the calibration range: activations saturate at -128/127, the extreme products.
    samples = [(rng(s).standard_normal((1, 3, 7, 7)) * 4).astype(np.float32) for s in range(3)]
    _, manifest = build(target, mixed_qdq, tmp_path, "mixed")
    got = get_target(target).run(tmp_path, manifest, [np.concatenate(samples)])[0][0]
    legal = legalize(mixed_qdq, target)
    for sample, have in zip(samples, got, strict=True):
        np.testing.assert_array_equal(have, run_reference(legal, {"x": sample})["y"])


@needs_tools("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump")
def test_the_manifest_and_the_library_say_what_was_built(mixed_qdq, tmp_path: Path) -> None:
    """``--no-micro-kernels`` leaves no sdot in the library and says so in the manifest."""
    model = tmp_path / "mixed_int8.onnx"
    onnx.save(mixed_qdq, str(model))
    listings = {}
    for on in (True, False):
        result = edgec.compile(model, tmp_path / str(on), target="cortex-a55", micro_kernels=on)
        listings[on] = subprocess.run(
            ["aarch64-linux-gnu-objdump", "-d", str(tmp_path / str(on) / "mixed_int8_kernels.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert result.manifest["capabilities"]["int8_micro_kernel"] == ("sdot" if on else None)
        assert result.manifest["micro_kernels"] == ({"sdot": 4} if on else {})
    assert len(re.findall(r"\bsdot\b", listings[True])) >= 16
    assert not re.search(r"\b(sdot|sadalp)\b", listings[False])


@pytest.mark.slow
@needs_tools("aarch64-linux-gnu-gcc", "qemu-aarch64-static")
def test_squeezenet_convolutions_all_take_sdot_and_equal_the_reference(tmp_path: Path) -> None:
    from tests.targets.test_integer import _cut_before_softmax, _input_shape, _light_fp32, _ort_qdq, _samples

    fp32 = _light_fp32("squeezenet")
    shape = _input_shape(fp32)
    cut, out, _ = _cut_before_softmax(_ort_qdq(fp32, _samples(shape, 4), tmp_path))
    module = _lowered(cut, "cortex-a55")
    convs = {gv.name_hint for gv in module.functions if gv.name_hint.startswith("fused_conv2d")}
    # Every conv kernel, conv1's 3 input channels padded to 4 (identical fire layers share one).
    assert micro_kernels_built(module) == {"sdot": len(convs)}
    x = _samples(shape, 1, seed=100)[0]
    want = run_reference(legalize(cut, "cortex-a55"), {cut.graph.input[0].name: x})[out]
    # The cut output (a DequantizeLinear) carries no shape; the harness needs one.
    cut.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, want.shape))
    _, manifest = build("cortex-a55", cut, tmp_path / "a55", "sq")
    got = get_target("cortex-a55").run(tmp_path / "a55", manifest, [x])[0][0]
    np.testing.assert_array_equal(got.reshape(want.shape), want)
