"""Binary weights in the artifact: ±1 INT2 tensors stored at one bit per weight, unpacked at run time.

``quantize{scheme=weight-binary}`` writes ±1 weights as ONNX INT2 (2 bits, what onnxruntime runs);
``targets/tvm/packed_weights.py`` recognises them and repacks them at one bit. The checks: the bit
layout, the Relax constants (1/32 of float32), outputs against onnxruntime on the same QDQ model,
the INT2 tensors that are not binary (they keep two bits), and the digits CNN on Cortex-M4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.targets.tvm.packed_layout import dequantize, pack, unpack
from edgec.targets.tvm.packed_weights import constant_bytes
from edgec.verify import run_onnx
from tests.targets.cortex_helpers import FP32_ATOL, max_error_vs_onnxruntime, needs_tools
from tests.targets.test_packed_weights import EXAMPLES, _dq_only, _lower, _pack, _packed, _qdq_model, _run

pytest.importorskip("tvm")


def _binary(model: onnx.ModelProto, q: np.ndarray) -> tuple[onnx.ModelProto, np.ndarray]:
    """The model with its INT2 weight replaced by the signs of ``q`` (``+1`` for 0)."""
    signs = np.where(q >= 0, 1, -1)
    weight = model.graph.initializer[0]
    weight.CopyFrom(helper.make_tensor("w_q", TensorProto.INT2, list(q.shape), signs.reshape(-1).tolist()))
    return model, signs


CASES = {
    # 16·4·3·3 = 576 weights, per output channel.
    "conv-per-axis": ("Conv", [1, 4, 8, 8], [16, 4, 3, 3], 0, 0, {}),
    # 61·5 = 305 weights: not a multiple of 8, so the last byte is partly padding.
    "matmul-per-axis-odd": ("MatMul", [3, 61], [61, 5], 1, 0, {}),
    "matmul-blocked": ("MatMul", [2, 64], [64, 16], 0, 32, {}),
}


def test_one_bit_pack_round_trips():
    signs = np.where(np.random.default_rng(0).normal(size=77) >= 0, 1, -1)
    packed = pack(signs, 1)
    assert packed.dtype == np.uint8 and packed.size == 10
    assert int(packed[0]) == sum(1 << k for k in range(8) if signs[k] > 0)
    np.testing.assert_array_equal(unpack(packed, 1, True, signs.size), signs)


@pytest.mark.parametrize("name", list(CASES))
def test_binary_weights_stay_one_bit_and_match_onnxruntime(name: str) -> None:
    op, x_shape, w_shape, axis, block, attrs = CASES[name]
    model, signs = _binary(*_qdq_model(op, x_shape, w_shape, TensorProto.INT2, axis, block, **attrs))

    graph, (spec,) = _pack(model)
    assert spec.bits == 1 and spec.nbytes == -(-signs.size // 8)
    packed = _packed(graph)
    np.testing.assert_array_equal(unpack(packed, 1, True, signs.size).reshape(signs.shape), signs)
    # The numpy reference dequantizes exactly like onnxruntime's DequantizeLinear on the INT2 tensor.
    np.testing.assert_array_equal(dequantize(spec, packed), run_onnx(_dq_only(model), {})["w"])

    # After the CPU pipeline the weight constant is the 1-bit bytes plus the 8-entry shift table.
    mod = _lower(model)
    constants = constant_bytes(mod)
    assert spec.nbytes <= constants["uint8"] <= spec.nbytes + 8
    assert constants.get("float32", 0) < signs.size  # the scales only, no float copy of the weight

    x_info = model.graph.input[0].type.tensor_type.shape
    x = np.random.default_rng(2).normal(size=[d.dim_value for d in x_info.dim]).astype(np.float32)
    np.testing.assert_allclose(_run(mod, x), run_onnx(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["a zero value", "a -2 value", "a zero point"])
def test_int2_tensors_that_are_not_binary_keep_two_bits(kind: str) -> None:
    """Only ±1 values with no zero point are binary; anything else is real INT2 data."""
    model, signs = _binary(*_qdq_model("MatMul", [3, 61], [61, 5], TensorProto.INT2, 1))
    if kind == "a zero point":
        zero = helper.make_tensor("w_zp", TensorProto.INT2, [5], [1, 0, 0, 0, 0])
        model.graph.initializer.append(zero)
        model.graph.node[0].input.append("w_zp")
    else:
        signs[0, 0] = 0 if kind == "a zero value" else -2
        model.graph.initializer[0].CopyFrom(
            helper.make_tensor("w_q", TensorProto.INT2, [61, 5], signs.reshape(-1).tolist())
        )
    _, (spec,) = _pack(model)
    assert spec.bits == 2


@pytest.mark.slow
@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
def test_digits_weight_binary_on_cortex_m4(tmp_path: Path) -> None:
    """The digits CNN with binary weights runs on Cortex-M4 (qemu) and equals onnxruntime on the
    QDQ graph; its weights take one bit each in the artifact, half of what 2-bit weights take."""
    import edgec

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=np.load(EXAMPLES / "digits_test.npz")["input"][:1])

    def build(scheme: str) -> dict:
        result = edgec.compile(
            EXAMPLES / "digits_cnn.onnx",
            tmp_path / scheme,
            target="cortex-m4",
            pipeline=f"default,quantize{{scheme={scheme}}}",
            inputs=inputs,
        )
        return result.manifest

    binary, two_bit = build("weight-binary"), build("weight-int2")
    # The artifact reproduces the quantized graph (float arithmetic after the 1-bit unpack).
    build_dir = tmp_path / "weight-binary"
    optimized = onnx.load(build_dir / "optimized.onnx")
    assert max_error_vs_onnxruntime("cortex-m4", optimized, build_dir, binary) <= FP32_ATOL
    # digits' 14,288 Conv/Gemm weights: 1,786 B at one bit, 3,572 B at two; both add the same
    # scales and biases, and a few bytes of shift tables (8 uint8 for one bit, 4 int8 for two).
    saved = two_bit["sizes"]["weights_bytes"] - binary["sizes"]["weights_bytes"]
    assert 14_288 // 8 - 24 <= saved <= 14_288 // 8
    assert binary["sizes"]["flash_bytes"] < two_bit["sizes"]["flash_bytes"]
