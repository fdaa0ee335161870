"""vpmaddwd kernels for int8 conv2d/matmul on x86 with AVX2 (``edgec.targets.tvm.x86_int8``): the
rule is only on for AVX2 targets, the digits and squeezenet convolutions take it and their machine
code has ``vpmaddwd``, layers that do not fit fall back, and every build equals the numpy
reference (and the build with the rule off) bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgec
from edgec.targets import get_target
from edgec.targets.integer.reference import run_reference
from edgec.targets.tvm.int8_dot import pair_interleave, relayout_constant_weights, weight_layout
from edgec.targets.tvm.translate import translate
from edgec.targets.tvm.x86_int8 import has_avx2
from tests.helpers import DIGITS, instructions_per_kernel, legalize, make_model, rng

tvm = pytest.importorskip("tvm")

# The host decides what can run; the module is compiled for haswell (x86-64-v3) so that the test
# means the same on any AVX2 machine.
AVX2 = {"kind": "llvm", "mcpu": "haswell"}
needs_avx2 = pytest.mark.skipif(
    not has_avx2({"kind": "llvm", "mcpu": str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())}),
    reason="the host CPU has no AVX2",
)


def _build(model: onnx.ModelProto, path: Path, rule: bool):
    """(module, relax VM) of ``model`` through the x86 flow, with the vpmaddwd rule on or off."""
    from tvm import relax

    from edgec.targets.tvm.build import build_shared_library, optimize_for_cpu

    module = optimize_for_cpu(translate(legalize(model)), AVX2, micro_kernels=rule)
    build_shared_library(module, AVX2, path)
    return module, relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())


def _laid_out(module) -> dict[str, list[int]]:
    """Kernel name -> shape of the weight the rule pair-interleaved."""
    found = {}
    for gv, func in module.functions.items():
        if layout := weight_layout(func):
            (index,) = layout
            found[gv.name_hint] = [int(d) for d in func.params[index].ty.shape]
    return found


def _run(vm, x: np.ndarray) -> np.ndarray:
    out = vm["main"](tvm.runtime.tensor(x))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def test_only_avx2_x86_targets_have_the_rule() -> None:
    assert has_avx2(get_target("x86-64-v3").tvm_target())
    assert has_avx2({"kind": "llvm", "mcpu": "znver3"})
    assert has_avx2({"kind": "llvm", "mcpu": "x86-64", "mattr": ["+avx2"]})
    assert not has_avx2({"kind": "llvm", "mcpu": "x86-64"})  # SSE2 only
    assert not has_avx2({"kind": "llvm", "mcpu": "sandybridge"})  # AVX without AVX2
    assert not has_avx2(get_target("cortex-a53").tvm_target())
    assert not has_avx2(get_target("cortex-m4").tvm_target())
    assert not has_avx2({"kind": "c"})
    # Switched off, the target declares no micro-kernel (and the manifest records the choice).
    off = dataclasses.replace(get_target("x86-64-v3"), micro_kernels=False)
    assert get_target("x86-64-v3").capabilities().int8_micro_kernel == "vpmaddwd"
    assert off.capabilities().int8_micro_kernel is None and off.describe()["micro_kernels"] is False


def test_pair_interleave_puts_each_input_channel_pair_next_to_each_other() -> None:
    w = np.arange(4 * 16).reshape(4, 16)  # (reduction, output channels)
    out = pair_interleave(w, [2, 8])
    assert out.shape == (2, 2, 8, 2)
    # W'[r/2, c/8, c%8, r%2] = W[r, c]: one 16-byte row holds (W[r, c], W[r+1, c]) for 8 channels.
    assert out[1, 1].reshape(-1).tolist() == [w[2 + k, 8 + c] for c in range(8) for k in range(2)]
    hwio = np.arange(3 * 3 * 4 * 8).reshape(3, 3, 4, 8)
    assert pair_interleave(hwio, [2, 8])[2, 1, 1, 0, 5, 1] == hwio[2, 1, 3, 5]


@needs_avx2
def test_digits_convolutions_take_the_rule_and_run_vpmaddwd_bit_exactly(edgec_digits_qdq, tmp_path):
    module, vm = _build(edgec_digits_qdq, tmp_path / "on.so", rule=True)
    kernels = _laid_out(module)
    # conv2 (16 -> 32) and conv3 (32 -> 32) as (3, 3, C/2, 32/8, 8, 2); conv1 has one input channel
    # and the classifier 10 outputs: both keep the plain schedule.
    assert sorted(kernels.values()) == [[3, 3, 8, 4, 8, 2], [3, 3, 16, 4, 8, 2]]
    counts = instructions_per_kernel(module, AVX2, "vpmaddwd")
    assert set(counts) == set(kernels), counts
    assert all(n >= 8 for n in counts.values()), counts
    # Re-laying out again finds nothing to do (the weights would be interleaved twice otherwise).
    assert relayout_constant_weights(module) is module

    _, plain = _build(edgec_digits_qdq, tmp_path / "off.so", rule=False)
    legal = legalize(edgec_digits_qdq)
    x = np.load(DIGITS / "digits_test.npz")["input"][:64]
    name = edgec_digits_qdq.graph.output[0].name
    for i in range(len(x)):
        want = run_reference(legal, {"input": x[i : i + 1]})[name]
        np.testing.assert_array_equal(_run(vm, x[i : i + 1]), want)
        np.testing.assert_array_equal(_run(plain, x[i : i + 1]), want)


def _odd_shapes_fp32() -> onnx.ModelProto:
    """Layers on both sides of the rule's limits: 3 input channels (falls back), 3x3 16 -> 16 on
    an odd 7-wide map (fits), depthwise 16 (falls back), grouped 16 -> 16 in 2 groups (falls
    back), 1x1 16 -> 12 (12 outputs: falls back), stride-2 16 -> 24 (fits); then a 24 -> 16 Gemm
    (fits) and a 12 -> 10 one (falls back)."""
    r = rng(7)

    def w(*shape: int) -> np.ndarray:
        return (r.standard_normal(shape) * 0.4).astype(np.float32)

    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("Conv", ["r2", "wd", "bd"], ["cd"], pads=[1, 1, 1, 1], group=16),
        node("Relu", ["cd"], ["rd"]),
        node("Conv", ["rd", "wg", "bg"], ["cg"], pads=[1, 1, 1, 1], group=2),
        node("Relu", ["cg"], ["rg"]),
        node("Conv", ["rg", "w3", "b3"], ["c3"]),
        node("GlobalAveragePool", ["c3"], ["g3"]),
        node("Flatten", ["g3"], ["f3"]),
        node("Gemm", ["f3", "wf3", "bf3"], ["y3"], transB=1),
        node("Conv", ["rg", "w4", "b4"], ["c4"], strides=[2, 2]),
        node("Relu", ["c4"], ["r4"]),
        node("GlobalAveragePool", ["r4"], ["g4"]),
        node("Flatten", ["g4"], ["f4"]),
        node("Gemm", ["f4", "wf4", "bf4"], ["h4"], transB=1),
        node("Relu", ["h4"], ["q4"]),
        node("Gemm", ["q4", "wf5", "bf5"], ["y4"], transB=1),
        node("Add", ["y3", "y4"], ["y"]),
    ]
    init = {
        "w1": w(16, 3, 3, 3), "b1": w(16), "w2": w(16, 16, 3, 3), "b2": w(16), "wd": w(16, 1, 3, 3),
        "bd": w(16), "wg": w(16, 8, 3, 3), "bg": w(16), "w3": w(12, 16, 1, 1), "b3": w(12),
        "wf3": w(10, 12), "bf3": w(10), "w4": w(24, 16, 3, 3), "b4": w(24), "wf4": w(16, 24),
        "bf4": w(16), "wf5": w(10, 16), "bf5": w(10),
    }  # fmt: skip
    return make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, 3, 7, 7])},
        {"y": (TensorProto.FLOAT, [1, 10])},
        init,
        name="odd_shapes",
    )


@needs_avx2
def test_layers_that_do_not_fit_fall_back_and_everything_stays_bit_exact(tmp_path) -> None:
    model, calib = tmp_path / "odd.onnx", tmp_path / "calib.npz"
    onnx.save(_odd_shapes_fp32(), str(model))
    np.savez(calib, x=rng(5).standard_normal((16, 1, 3, 7, 7)).astype(np.float32))
    edgec.optimize(model, tmp_path / "odd_int8.onnx", pipeline="default,quantize", calib=calib)
    qdq = onnx.load(str(tmp_path / "odd_int8.onnx"))
    module, vm = _build(qdq, tmp_path / "on.so", rule=True)
    # 16 -> 16 (odd width: one-column tiles of 2 vectors), stride-2 16 -> 24 (3 vectors) and the
    # 24 -> 16 Gemm; not the 3-channel input layer, the depthwise and grouped convolutions, the
    # 12-output 1x1 or the 10-output Gemms.
    assert sorted(_laid_out(module).values()) == [[3, 3, 8, 2, 8, 2], [3, 3, 8, 3, 8, 2], [12, 2, 8, 2]]
    assert set(instructions_per_kernel(module, AVX2, "vpmaddwd")) == set(_laid_out(module))
    _, plain = _build(qdq, tmp_path / "off.so", rule=False)
    legal = legalize(qdq)
    # Inputs 4x the calibration range: activations saturate at -128/127, the extreme products.
    for seed in range(4):
        x = (rng(seed).standard_normal((1, 3, 7, 7)) * 4).astype(np.float32)
        want = run_reference(legal, {"x": x})["y"]
        np.testing.assert_array_equal(_run(vm, x), want)
        np.testing.assert_array_equal(_run(plain, x), want)


@needs_avx2
def test_squeezenet_convolutions_run_vpmaddwd_and_equal_the_reference(tmp_path) -> None:
    from tests.targets.test_integer import _cut_before_softmax, _input_shape, _light_fp32, _ort_qdq, _samples

    fp32 = _light_fp32("squeezenet")
    shape = _input_shape(fp32)
    cut, out, _ = _cut_before_softmax(_ort_qdq(fp32, _samples(shape, 4), tmp_path))
    name = cut.graph.input[0].name
    module, vm = _build(cut, tmp_path / "on.so", rule=True)
    kernels = _laid_out(module)
    counts = instructions_per_kernel(module, AVX2, "vpmaddwd")
    # Every conv kernel but conv1 (3 input channels); identical fire layers share a kernel.
    convs = [gv.name_hint for gv in module.functions if gv.name_hint.startswith("fused_conv2d")]
    assert len(kernels) == len(convs) - 1 == 21, sorted(set(convs) - set(kernels))
    assert set(counts) == set(kernels)
    x = _samples(shape, 1, seed=100)[0]
    np.testing.assert_array_equal(_run(vm, x), run_reference(legalize(cut), {name: x})[out])


@needs_avx2
def test_switching_micro_kernels_off_is_an_option_recorded_in_the_manifest(tmp_path) -> None:
    """``--no-micro-kernels`` changes the generated code and says so: no vpmaddwd in the library,
    the manifest's target and capabilities record the choice."""
    import subprocess

    import edgec
    from tests.helpers import REPO

    digits = REPO / "examples" / "digits"
    result = edgec.compile(
        digits / "digits_cnn.onnx",
        tmp_path / "off",
        target="x86-64-v3",
        quantize="int8",
        calib=digits / "digits_calib.npz",
        micro_kernels=False,
    )
    assert result.manifest["target"]["micro_kernels"] is False
    assert result.manifest["capabilities"]["int8_micro_kernel"] is None
    disassembly = subprocess.run(
        ["objdump", "-d", str(tmp_path / "off" / "model.so")], capture_output=True, text=True, check=True
    ).stdout
    assert "vpmaddwd" not in disassembly
