"""Cortex-M targets: runtime-free C under qemu-system-arm (MPS2 boards, semihosting)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec.errors import ToolchainError
from edgec.targets import get_target
from tests.targets.cortex_helpers import (
    DIGITS_ONNX,
    FP32_ATOL,
    build,
    max_error_vs_onnxruntime,
    mobilenet_block_model,
    needs_tools,
)

pytestmark = needs_tools("arm-none-eabi-gcc", "qemu-system-arm")


@pytest.fixture(scope="module")
def digits_m4(tmp_path_factory) -> tuple[Path, dict, object]:
    out = tmp_path_factory.mktemp("digits_m4")
    artifact, manifest = build("cortex-m4", onnx.load(DIGITS_ONNX), out, "digits")
    return out, manifest, artifact


def test_digits_on_cortex_m4_matches_onnxruntime(digits_m4):
    out, manifest, artifact = digits_m4
    error = max_error_vs_onnxruntime("cortex-m4", onnx.load(DIGITS_ONNX), out, manifest)
    assert error <= FP32_ATOL
    sizes = artifact.sizes
    # The arena is the greedy plan; it can never beat the liveness bound, and should not lose much.
    assert sizes["arena_lower_bound_bytes"] <= sizes["arena_bytes"] <= 1.1 * sizes["arena_lower_bound_bytes"]
    assert sizes["arena_bytes"] < sizes["arena_naive_bytes"]
    assert sizes["weights_bytes"] > 50_000  # 14.7k fp32 parameters live in flash
    assert sizes["flash_bytes"] == sizes["code_bytes"] + sizes["weights_bytes"]
    assert sizes["peak_ram_bytes"] == sizes["arena_bytes"] + sizes["stack_bytes"]
    assert sizes["flash_bytes"] < get_target("cortex-m4").flash_bytes


def test_generated_c_has_no_heap_no_stdio_and_prefixed_symbols(digits_m4):
    out, _, _ = digits_m4
    for file in ("digits.c", "digits_params.c", "edgec_shim.c", "digits.h"):
        assert "<stdio.h>" not in (out / file).read_text(), file
    assert "#define DIGITS_ARENA_BYTES" in (out / "digits.h").read_text()
    undefined = subprocess.run(
        ["arm-none-eabi-nm", "-u", str(out / "libdigits.a")], capture_output=True, text=True, check=True
    ).stdout.split()
    forbidden = {"malloc", "calloc", "realloc", "free", "printf", "puts", "fopen", "fwrite", "_sbrk", "abort"}
    assert not forbidden & set(undefined), sorted(forbidden & set(undefined))
    nm = subprocess.run(
        ["arm-none-eabi-nm", "-g", "--defined-only", str(out / "libdigits.a")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    strong = [
        line.split()[-1] for line in nm.splitlines() if len(line.split()) == 3 and line.split()[1] in "TDBR"
    ]
    # Every strong global a model defines carries its prefix; the shim's symbols are weak.
    assert strong and all(s.startswith(("digits_", "__tvm_ffi_digits_")) for s in strong), strong


@pytest.mark.parametrize("core", ["cortex-m3", "cortex-m7", "cortex-m55"])
def test_digits_on_other_cores(core, tmp_path):
    model = onnx.load(DIGITS_ONNX)
    _, manifest = build(core, model, tmp_path, "digits")
    assert max_error_vs_onnxruntime(core, model, tmp_path, manifest) <= FP32_ATOL
    disassembly = subprocess.run(
        ["arm-none-eabi-objdump", "-d", str(tmp_path / "digits_kernels.o")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if core == "cortex-m3":
        # Soft float: the kernels must not contain a single FPU instruction.
        assert "vmul" not in disassembly and "vadd" not in disassembly and "vfma" not in disassembly
    if core == "cortex-m55":
        # Helium: LLVM vectorises the fp32 kernels onto the 128-bit q registers.
        assert "vldrw.u32\tq" in disassembly or "vfma.f32\tq" in disassembly


def test_mobilenet_block_on_cortex_m4(tmp_path):
    model = mobilenet_block_model()
    artifact, manifest = build("cortex-m4", model, tmp_path, "mobilenet")
    assert max_error_vs_onnxruntime("cortex-m4", model, tmp_path, manifest) <= FP32_ATOL
    # Issue 7's goal: arena within 1.1x of the liveness lower bound.
    assert artifact.sizes["arena_bytes"] <= 1.1 * artifact.sizes["arena_lower_bound_bytes"]


def test_two_models_in_one_firmware(digits_m4, tmp_path):
    """Both models link into one image (prefixes keep their symbols apart) and both are right."""
    from edgec.targets.runners import build_harness, exchange, launch
    from edgec.verify import run_onnx

    digits_dir, _, digits_artifact = digits_m4
    mobilenet = mobilenet_block_model()
    mobilenet_dir = tmp_path / "mobilenet"
    mobilenet_artifact, _ = build("cortex-m4", mobilenet, mobilenet_dir, "mobilenet")
    target = get_target("cortex-m4")
    work = tmp_path / "work"
    work.mkdir()
    image = build_harness(target, [digits_dir, mobilenet_dir], [("digits", 1, 1), ("mobilenet", 1, 1)], work)
    x_digits = np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)
    x_mobile = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    specs = [("float32", [1, 10]), ("float32", [1, 10])]
    result = exchange(
        work, [x_digits[None], x_mobile[None]], specs, 0, lambda cwd: launch(target, image, cwd)
    )
    expected_digits = run_onnx(onnx.load(DIGITS_ONNX), {"input": x_digits})["logits"]
    expected_mobile = run_onnx(mobilenet, {"x": x_mobile})["y"]
    np.testing.assert_allclose(result.outputs[0][0], expected_digits, atol=FP32_ATOL, rtol=0)
    np.testing.assert_allclose(result.outputs[1][0], expected_mobile, atol=FP32_ATOL, rtol=0)
    # The stack the runs really used (painted stack, measured below main's frame) stays within
    # the static estimate, an upper bound from frame tables and the kernels' stack arrays.
    estimate = max(digits_artifact.sizes["stack_bytes"], mobilenet_artifact.sizes["stack_bytes"])
    assert result.stack_bytes is not None and 0 < result.stack_bytes <= estimate


def test_emulator_timeout_is_a_clear_error(digits_m4, monkeypatch):
    out, manifest, _ = digits_m4
    monkeypatch.setenv("EDGEC_EMULATOR_TIMEOUT", "0.01")
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(ToolchainError, match=r"did not finish within 0\.01 s"):
        get_target("cortex-m4").run(out, manifest, [x[None]])


def test_missing_toolchain_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cross compiler on PATH
    target = get_target("cortex-m4")
    with pytest.raises(ToolchainError, match="apt-get install gcc-arm-none-eabi"):
        target.build(None, tmp_path, "digits")


def test_a_batch_links_once_and_boots_once(digits_m4, monkeypatch):
    """Twelve samples: one harness link, one qemu boot, and each sample's outputs equal its run
    alone (the batch reads every sample at its offset, and appends every output)."""
    from edgec.targets import runners
    from edgec.verify import run_onnx

    out, manifest, _ = digits_m4
    counts = {"link": 0, "boot": 0}
    build_harness, run_emulator = runners.build_harness, runners.run_emulator

    def counted(key, function):
        def call(*args, **kwargs):
            counts[key] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(runners, "build_harness", counted("link", build_harness))
    monkeypatch.setattr(runners, "run_emulator", counted("boot", run_emulator))
    x = np.load(DIGITS_ONNX.parent / "digits_test.npz")["input"][:12, None]
    (batch,), times = get_target("cortex-m4").run(out, manifest, [x], repeat=2)
    assert counts == {"link": 1, "boot": 1} and len(times) == 2 and batch.shape == (12, 1, 10)
    (alone,), _ = get_target("cortex-m4").run(out, manifest, [x[7:8]])
    np.testing.assert_array_equal(batch[7], alone[0])
    expected = np.stack([run_onnx(onnx.load(DIGITS_ONNX), {"input": image})["logits"] for image in x])
    np.testing.assert_allclose(batch, expected, atol=FP32_ATOL, rtol=0)


def _resize_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", name="upsample")],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m3"])
def test_float_to_int64_helpers_use_the_eabi_convention(target, tmp_path):
    """Resize computes its source rows as float -> int64 conversions, which LLVM leaves to libgcc.
    With the triple written ``thumbv7em-none-eabihf`` LLVM missed the EABI environment and called
    ``__fixsfdi`` with the hard-float convention, where libgcc's is the soft-float ``__aeabi_f2lz``:
    every row came out as row 0 on Cortex-M4 (M3, soft-float, was right)."""
    model = _resize_model()
    _, manifest = build(target, model, tmp_path, "resize")
    assert max_error_vs_onnxruntime(target, model, tmp_path, manifest) == 0.0
    symbols = subprocess.run(
        ["arm-none-eabi-nm", "-u", str(tmp_path / "resize_kernels.o")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    generic = {"__fixsfdi", "__fixunssfdi", "__floatdisf", "__floatundisf", "__adddf3", "__muldf3"}
    assert not generic & set(symbols.split())
