"""int8 kernels with VNNI vpdpbusd (targets/tvm/x86_vnni.py): AVX-512 VNNI (16 lanes) and AVX-VNNI
(8 lanes), bit-exact with the integer reference. Tests that run code need the host CPU to have
the instructions and say so when it does not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.targets.integer.reference import run_reference
from edgec.targets.tvm.int8_dot import relayout_constant_weights, weight_layout
from edgec.targets.tvm.x86_vnni import vnni_lanes
from edgec.targets.x86 import host_cpu_flags
from tests.helpers import DIGITS, instructions_per_kernel, legalize

tvm = pytest.importorskip("tvm")

AVX512_VNNI = {"kind": "llvm", "mcpu": "znver4"}
AVX_VNNI = {"kind": "llvm", "mcpu": "alderlake"}  # AVX-VNNI (VEX, ymm) without AVX-512


def test_vnni_lanes_follow_the_cpu() -> None:
    assert vnni_lanes(tvm.target.Target(AVX512_VNNI)) == 16
    assert vnni_lanes(tvm.target.Target(AVX_VNNI)) == 8
    assert vnni_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})) == 0
    assert vnni_lanes(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})) == 0


@pytest.mark.parametrize(
    ("target", "flag", "lanes"), [(AVX512_VNNI, "avx512_vnni", 16), (AVX_VNNI, "avx_vnni", 8)]
)
def test_digits_convolutions_run_vpdpbusd_bit_exactly(edgec_digits_qdq, tmp_path, target, flag, lanes):
    from tvm import relax

    from edgec.targets.tvm.build import build_shared_library, optimize_for_cpu
    from edgec.targets.tvm.translate import translate

    legal = legalize(edgec_digits_qdq)
    module = optimize_for_cpu(translate(legal), target)
    laid_out = {gv.name_hint: weight_layout(f) for gv, f in module.functions.items() if weight_layout(f)}
    # conv2 (16 -> 32) and conv3 (32 -> 32) have reductions of 4k input channels and 16k outputs.
    assert len(laid_out) == 2 and all(
        v == [4, lanes] for layout in laid_out.values() for v in layout.values()
    )
    counts = instructions_per_kernel(module, target, "vpdpbusd")
    assert set(counts) == set(laid_out) and all(n >= 4 for n in counts.values()), counts
    assert relayout_constant_weights(module) is module  # weights and biases are not shifted twice
    if flag not in host_cpu_flags():
        pytest.skip(f"the host CPU has no {flag}: the code was generated, not run")
    build_shared_library(module, target, tmp_path / "m.so")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "m.so")), tvm.cpu())
    x = np.load(DIGITS / "digits_test.npz")["input"][:32]
    name = edgec_digits_qdq.graph.output[0].name
    for i in range(len(x)):
        out = vm["main"](tvm.runtime.tensor(x[i : i + 1]))
        got = (out if hasattr(out, "numpy") else out[0]).numpy()
        np.testing.assert_array_equal(got, run_reference(legal, {"input": x[i : i + 1]})[name])


@pytest.mark.parametrize("target", ["x86", "x86-64-v3"])
def test_the_manifest_records_the_micro_kernel_the_cpu_got(edgec_digits_qdq, tmp_path, target) -> None:
    import onnx

    import edgec

    path = tmp_path / "digits_int8.onnx"
    onnx.save_model(edgec_digits_qdq, str(path))
    manifest = edgec.compile(path, tmp_path / "build", target=target).manifest
    host_vnni = bool(host_cpu_flags() & {"avx512_vnni", "avx_vnni"})
    # The host target takes VNNI when this CPU has it; the portable AVX2 target never does.
    expected = "vpdpbusd" if target == "x86" and host_vnni else "vpmaddwd"
    assert manifest["capabilities"]["int8_micro_kernel"] == expected
    # conv2 and conv3 take it; conv1 (a reduction of 9) and the 10-class matmul are declined.
    assert manifest["micro_kernels"] == {expected: 2}
    assert manifest["status"]["ok"]


def _classifier_conv(classes: int = 1000) -> onnx.ModelProto:
    """SqueezeNet's last layer: a 1x1 conv of 13x13x64 to ``classes`` channels, then ReLU."""

    w = np.random.default_rng(0).normal(0, 0.1, (classes, 64, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 13, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes, 13, 13])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_an_int8_conv_a_few_channels_short_of_whole_vectors_runs_vpdpbusd_bit_exactly(tmp_path) -> None:
    # 1000 output channels are no whole number of 16-lane vectors: computed as 1008 on zero
    # filters (the requantization sinks past the slice), they take vpdpbusd instead of vpmaddwd.
    from tvm import relax

    from edgec.targets.tvm.build import build_shared_library, optimize_for_cpu
    from edgec.targets.tvm.translate import translate
    from tests.targets.cortex_helpers import int8_qdq

    legal = legalize(int8_qdq(_classifier_conv()))
    module = optimize_for_cpu(translate(legal), AVX512_VNNI)
    layouts = [weight_layout(f) for f in module.functions.values() if weight_layout(f)]
    assert layouts and all(v == [4, 16] for layout in layouts for v in layout.values()), layouts
    if "avx512_vnni" not in host_cpu_flags():
        pytest.skip("the host CPU has no avx512_vnni: the code was generated, not run")
    build_shared_library(module, AVX512_VNNI, tmp_path / "m.so")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "m.so")), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 64, 13, 13)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(x))
    got = (out if hasattr(out, "numpy") else out[0]).numpy()
    np.testing.assert_array_equal(got, run_reference(legal, {"x": x})["y"])
