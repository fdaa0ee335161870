"""The int32 form of the requantization epilogue (``edgec.targets.integer.epilogue``): when it is
used, that it equals TFLite's single-rounding formula bit for bit once compiled, and when it must
not be used."""

from __future__ import annotations

import re

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from edgec.targets.integer.epilogue import emit_finish, emit_multiply_high, high_word_shift
from edgec.targets.integer.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402


def _node(rounding: str = "single") -> gs.Node:
    return gs.Node("Requantize", attrs={"y_zero_point": -3, "lo": -128, "hi": 127, "rounding": rounding})


def _module(body, shape: tuple[int, ...]) -> tvm.IRModule:
    """A Relax module ``main(x: int32[shape]) = body(builder, x)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _int64_ops(mod: tvm.IRModule) -> list[str]:
    """The Relax ops of ``main`` that produce int64 tensors, in order (``astype``, ``multiply``...)."""
    return re.findall(r'dtype="int64"\) = R\.(\w+)\(', mod.script())


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _extremes(rng: np.random.Generator, rows: int, channels: int) -> np.ndarray:
    x = rng.integers(-(2**31), 2**31, (rows, channels), dtype=np.int64)
    x[: rows // 4] = rng.integers(-3000, 3000, (rows // 4, channels))  # small sums: many exact ties
    x[rows // 4, :] = -(2**31)
    x[rows // 4 + 1, :] = 2**31 - 1
    return x.astype(np.int32)


def test_high_word_form_equals_tflite_single_rounding_compiled() -> None:
    rng = np.random.default_rng(0)
    channels = 64
    mult = rng.integers(2**30, 2**31, channels, dtype=np.int64)
    mult[:4] = [2**30, 2**31 - 1, 2**30, 2**31 - 1]  # a power of two (ties) and the largest mantissa
    shift = rng.integers(-31, -1, channels)
    shift[:4] = [-2, -2, -31, -31]  # the ends of the range the form takes
    right = high_word_shift(shift, "single")
    assert right is not None
    x = _extremes(rng, 4096, channels)
    got = _run(_module(lambda bb, v: emit_multiply_high(v, mult, right, 2, 1), x.shape), x)
    want = multiply_by_quantized_multiplier(x.astype(np.int64), mult[None], shift[None], "single")
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_finish_is_int32_for_small_multipliers_and_bit_exact() -> None:
    rng = np.random.default_rng(1)
    mult, shift = quantize_multiplier(rng.uniform(1e-4, 0.2, 16))
    node = _node()
    mod = _module(lambda bb, v: emit_finish(bb, v, node, 2, 1, mult, shift), (512, 16))
    # Only the product and its high word in 64 bits; rounding, zero point and clamp in 32.
    assert _int64_ops(mod) == ["astype", "multiply", "right_shift"]
    assert 'R.right_shift(lv1, R.const(32, "int64"))' in mod.script()
    x = (rng.standard_normal((512, 16)) * 40_000).astype(np.int32)
    want = np.clip(multiply_by_quantized_multiplier(x.astype(np.int64), mult, shift, "single") - 3, -128, 127)
    np.testing.assert_array_equal(_run(mod, x), want.astype(np.int8))


@pytest.mark.parametrize(
    ("shift", "rounding", "why"),
    [
        ([-1, -5], "single", "a multiplier of 0.25 or more: s = 0, no rounding bit below the high word"),
        ([0, -5], "single", "a multiplier of 0.5 or more"),
        ([-3, -5], "double", "double rounding rounds the doubling product first"),
    ],
)
def test_high_word_form_is_refused(shift: list[int], rounding: str, why: str) -> None:
    assert high_word_shift(np.array(shift), rounding) is None, why
    node = _node(rounding)
    mult = np.array([2**30, 2**30 + 12345])
    mod = _module(lambda bb, v: emit_finish(bb, v, node, 2, 1, mult, np.array(shift)), (8, 2))
    # The int64 form: rounding add, shift, zero point and clamp in 64 bits.
    assert _int64_ops(mod)[:4] == ["astype", "multiply", "add", "right_shift"]
    x = np.random.default_rng(2).integers(-(2**20), 2**20, (8, 2)).astype(np.int32)
    want = multiply_by_quantized_multiplier(x.astype(np.int64), mult, np.array(shift), rounding)
    np.testing.assert_array_equal(_run(mod, x), np.clip(want - 3, -128, 127).astype(np.int8))
