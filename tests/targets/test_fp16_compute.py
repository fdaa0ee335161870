"""Float16 compute on targets with fp16 arithmetic (cortex-a55, cortex-m55), refused elsewhere.

The digits CNN goes through ``quantize{scheme=fp16,compute=float16}``, is rebuilt with the batch
dimension set to the test-set size (one emulator run classifies every test digit), and its
artifact's outputs are compared with onnxruntime running the same float16 ONNX graph and with
the float32 original.

Bounds, in float16 unit roundoffs ``u = 2^-11`` of the largest logit: onnxruntime's CPU kernels
compute float16 ops in float32 and round each op's output, while the target's kernels also
accumulate in float16; conv3 sums 288 products, whose rounding errors grow like ``sqrt(288) u``
(17 u) of the magnitude of its terms. Target vs float16 graph: 16 u (measured 5.8 u on
cortex-a55, 4.4 u on cortex-m55). Target vs float32: 24 u, that plus the 8 u bound of the graph
itself (measured 6.5 u and 5.6 u).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec.errors import EdgecError, ToolchainError
from edgec.ir import EdgeGraph
from edgec.pm import PassContext, get_pass
from edgec.targets import get_target
from edgec.targets.registry import all_targets
from edgec.targets.runners import build_harness, run_emulator
from edgec.verify import run_onnx
from tests.helpers import DIGITS
from tests.targets.cortex_helpers import DIGITS_ONNX, build, needs_tools

FP16_UNIT_ROUNDOFF = 2.0**-11
VS_FLOAT16_GRAPH = 16 * FP16_UNIT_ROUNDOFF
VS_FLOAT32 = 24 * FP16_UNIT_ROUNDOFF
# Test digits per emulator run: the M55 board's 4 MiB SRAM holds the arena of 200 at a time.
BATCH = {"cortex-a55": 450, "cortex-m55": 200}
TOOLS = {
    "cortex-a55": ("aarch64-linux-gnu-gcc", "qemu-aarch64-static"),
    "cortex-m55": ("arm-none-eabi-gcc", "qemu-system-arm"),
}
REFUSAL = "use --quantize fp16 for fp16 storage with float32 compute, or a target with fp16 arithmetic: "


def rebatch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """``model`` with the leading (batch) dimension of its inputs and outputs set to ``batch``."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    for value in (*copy.graph.input, *copy.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    del copy.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(copy)


@pytest.fixture(scope="module")
def half_digits() -> onnx.ModelProto:
    graph = EdgeGraph.from_onnx(onnx.load(DIGITS_ONNX))
    calibration = dict(np.load(DIGITS / "digits_calib.npz"))
    step = get_pass("quantize")(scheme="fp16", compute="float16")
    return step.run(graph, PassContext(calibration=calibration)).graph.to_onnx()


@pytest.fixture(scope="module", params=["cortex-a55", "cortex-m55"])
def fp16_build(request, half_digits, tmp_path_factory):
    """``(target, build dir, manifest, artifact, model)`` of the batched float16 digits CNN."""
    target = request.param
    missing = [tool for tool in TOOLS[target] if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {missing}")
    model = rebatch(half_digits, BATCH[target])
    out = tmp_path_factory.mktemp(f"fp16_{target}")
    artifact, manifest = build(target, model, out, "digits")
    return target, out, manifest, artifact, model


@pytest.mark.slow
def test_fp16_build_matches_onnxruntime_and_float32(fp16_build):
    target, out, manifest, _, model = fp16_build
    test = dict(np.load(DIGITS / "digits_test.npz"))
    count = BATCH[target]
    images, labels = test["input"][:count].astype(np.float32), test["label"][:count]
    (got,), _ = get_target(target).run(out, manifest, [images[None]])
    got = got[0]
    float16_graph = run_onnx(model, {"input": images})["logits"]
    float32 = run_onnx(rebatch(onnx.load(DIGITS_ONNX), count), {"input": images})["logits"]
    scale = float(np.abs(float32).max())
    assert np.abs(got - float16_graph).max() <= VS_FLOAT16_GRAPH * scale
    assert np.abs(got - float32).max() <= VS_FLOAT32 * scale
    # Float16 must not cost digits: the same classifications within one test digit.
    accuracy, float_accuracy = (float((y.argmax(1) == labels).mean()) for y in (got, float32))
    assert accuracy >= float_accuracy - 1 / count


def _disassembly(target: str, out: Path) -> str:
    # GNU objdump decodes MVE (Helium) only when told the architecture; otherwise it prints cdp2.
    tool = (
        ["aarch64-linux-gnu-objdump"]
        if target == "cortex-a55"
        else ["arm-none-eabi-objdump", "-m", "armv8.1-m.main"]
    )
    return subprocess.run(
        [*tool, "-d", str(out / "digits_kernels.o")], capture_output=True, text=True, check=True
    ).stdout


def test_kernels_use_half_precision_instructions(fp16_build):
    """The kernels compute with fp16 vector FMAs, not float32 ones on converted values."""
    target, out, _, _, _ = fp16_build
    disassembly = _disassembly(target, out)
    if target == "cortex-a55":
        half = len(re.findall(r"\bfmla\s+v\d+\.8h", disassembly))
        single = len(re.findall(r"\bfmla\s+v\d+\.4s", disassembly))
        # 8 halves per 128-bit register (the schedules tile float16 for 8 lanes, not 4).
        assert half > 500 and single == 0, (half, single)
    else:
        # Vector-by-vector or vector-by-scalar (a broadcast input) fp16 FMAs.
        assert re.search(r"\bvfma\.f16\s+q\d", disassembly)
        assert not re.search(r"\bvfma\.f32\b", disassembly)


def test_weights_stay_float16_in_flash(fp16_build):
    _, _, _, artifact, model = fp16_build
    half_bytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert artifact.sizes["weights_bytes"] == half_bytes


# Only the A55: qemu's mps3-an547 board offers no M-profile CPU without MVE to compare with.
@pytest.mark.parametrize("fp16_build", ["cortex-a55"], indirect=True)
@needs_tools("aarch64-linux-gnu-gcc", "qemu-aarch64-static")
def test_qemu_executes_the_fp16_instructions(fp16_build, tmp_path):
    """Under a CPU model without FEAT_FP16 (cortex-a53) the same harness dies on the first fp16
    instruction: qemu-aarch64 really executes them on cortex-a55's CPU model (cortex-a76)."""
    target, out, manifest, _, _ = fp16_build
    runner = get_target(target)
    image = build_harness(runner, [out], [("digits", 1, 1)], tmp_path)
    shape = manifest["inputs"][0]["shape"]
    (tmp_path / "in0.bin").write_bytes(np.zeros(shape, np.float32).tobytes())
    (tmp_path / "edgec_repeat.txt").write_text("0\n")
    run_emulator(["qemu-aarch64-static", "-cpu", runner.qemu_cpu, str(image)], tmp_path, 120, "cortex-a76")
    with pytest.raises(ToolchainError, match="Illegal instruction"):
        run_emulator(["qemu-aarch64-static", "-cpu", "cortex-a53", str(image)], tmp_path, 120, "cortex-a53")


@needs_tools("arm-none-eabi-gcc")
def test_cortex_m55_fp16_is_smaller_than_float32(half_digits, tmp_path):
    """Same BatchNorm-folded network: half the weight bytes and no more code."""
    folded = get_pass("fuse-conv-bn")().run(EdgeGraph.from_onnx(onnx.load(DIGITS_ONNX)), PassContext())
    fp32, _ = build("cortex-m55", folded.graph.to_onnx(), tmp_path / "fp32", "digits")
    fp16, _ = build("cortex-m55", half_digits, tmp_path / "fp16", "digits")
    assert fp16.sizes["weights_bytes"] * 2 == fp32.sizes["weights_bytes"]
    assert fp16.sizes["code_bytes"] <= fp32.sizes["code_bytes"]
    assert fp16.sizes["arena_bytes"] < fp32.sizes["arena_bytes"]


# ----- the capability --------------------------------------------------------------------------


def test_fp16_arithmetic_capability_and_llvm_features():
    import tvm
    from tvm.target import codegen

    needed = {"cortex-a55": ("neon", "fullfp16"), "cortex-m55": ("mve.fp", "fullfp16")}
    for name, features in needed.items():
        target = get_target(name)
        assert target.fp16_arithmetic and target.describe()["fp16_arithmetic"] is True
        tvm_target = tvm.target.Target(target.tvm_target())
        with tvm_target:
            assert all(codegen.target_has_features(f, tvm_target) for f in features), name
    assert get_target("cortex-a55").runner == get_target("cortex-a53").runner == "qemu-aarch64"
    for name in ("cortex-a53", "cortex-a72", "cortex-m3", "cortex-m4", "cortex-m7", "x86-64-v3", "c"):
        assert get_target(name).has_fp16_arithmetic() is False, name


@pytest.mark.parametrize("name", ["cortex-m4", "cortex-a53", "x86", "x86-64-v3"])
def test_float16_graph_is_refused_without_fp16_arithmetic(name, half_digits):
    target = get_target(name)
    if target.has_fp16_arithmetic():
        pytest.skip(f"this host's CPU computes in float16 ({name} has avx512fp16)")
    with pytest.raises(EdgecError) as refused:
        target.lower(EdgeGraph.from_onnx(half_digits))
    message = str(refused.value)
    assert f"Conv 'conv1' computes in float16 but target '{name}' has no fp16 arithmetic" in message
    # The Arm cores with fp16 arithmetic, plus x86 on a host with AVX512-FP16.
    capable = sorted(n for n, t in all_targets().items() if t.has_fp16_arithmetic())
    assert {"cortex-a55", "cortex-m55"} <= set(capable)
    assert message.endswith(REFUSAL + ", ".join(capable))


def test_fp16_storage_is_not_refused():
    """quantize{scheme=fp16} (float16 weights, float32 compute) still builds for every target."""
    graph = EdgeGraph.from_onnx(onnx.load(DIGITS_ONNX))
    calibration = dict(np.load(DIGITS / "digits_calib.npz"))
    stored = get_pass("quantize")(scheme="fp16").run(graph, PassContext(calibration=calibration)).graph
    for name in ("cortex-m4", "cortex-a53", "x86"):
        get_target(name).check_float16_compute(stored)  # raises if refused
