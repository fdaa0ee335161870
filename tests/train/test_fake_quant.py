"""The fake-quantization kernel: its forward is the QDQ pair's, its gradient the STE/LSQ formula."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from edgec.train.fake_quant import FakeQuantSpec, insert_fake_quant  # noqa: E402
from edgec.train.gradients import register_gradients  # noqa: E402


def _module(shape, scale_shape, axis, zero, out_dtype="int8"):
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    s = relax.Var("s", relax.TensorType(scale_shape, "float32"))
    g = relax.Var("g", relax.TensorType(shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, s, g]):
        with bb.dataflow():
            zero_point = relax.const(np.full(scale_shape, zero, np.int8), "int8")
            q = bb.emit(relax.op.quantize(x, s, zero_point, axis=axis, out_dtype=out_dtype))
            y = bb.emit(relax.op.dequantize(q, s, zero_point, axis=axis, out_dtype="float32"))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(y, g)))
        bb.emit_func_output(loss)
    return bb.get()


def _run(spec, shape, scale_shape, axis, zero, x, s, g):
    register_gradients()
    module, replaced = insert_fake_quant(_module(shape, scale_shape, axis, zero), "main", {"s": spec})
    assert replaced == 1
    params = list(module["main"].params[:2])
    module = relax.transform.Gradient("main", require_grads=params)(module)
    # The adjoint computes the loss too; the forward keeps call_tir_with_grad, which the VM cannot run.
    module = tvm.IRModule({gv: f for gv, f in module.functions.items() if gv.name_hint != "main"})
    vm = relax.VirtualMachine(tvm.compile(module, "llvm"), tvm.cpu())
    args = [tvm.runtime.tensor(a.astype(np.float32)) for a in (x, s, g)]
    loss, (dx, ds) = vm["main_adjoint"](*args)
    return float(loss.numpy()), dx.numpy(), ds.numpy()


def test_int4_per_channel_forward_and_straight_through_gradients():
    generator = np.random.default_rng(0)
    x = generator.normal(size=(3, 8))
    s = np.array([0.1, 0.2, 0.05])
    g = generator.normal(size=(3, 8))
    loss, dx, ds = _run(FakeQuantSpec.for_bits(4), (3, 8), (3,), 0, 0, x, s, g)
    v = x / s[:, None]
    q = np.clip(np.round(v), -7, 7)
    np.testing.assert_allclose(loss, np.sum(q * s[:, None] * g), rtol=1e-5)
    inside = np.abs(np.round(v)) <= 7
    np.testing.assert_allclose(dx, np.where(inside, g, 0), atol=1e-6)
    lsq = np.where(inside, np.round(v) - v, q)
    np.testing.assert_allclose(ds, (g * lsq).sum(axis=1), rtol=1e-4, atol=1e-5)


def test_int8_activation_with_zero_point_per_tensor():
    generator = np.random.default_rng(1)
    x = generator.uniform(-1, 4, size=(2, 5))
    s, zero = np.array(0.02), -128  # [0, 5.1]: the folded-ReLU range
    g = generator.normal(size=(2, 5))
    loss, dx, ds = _run(FakeQuantSpec(-128, 127), (2, 5), (), 0, zero, x, s, g)
    level = np.round(x / s) + zero
    q = np.clip(level, -128, 127) - zero
    np.testing.assert_allclose(loss, np.sum(q * s * g), rtol=1e-5)
    np.testing.assert_allclose(dx, np.where(level >= -128, g, 0), atol=1e-6)  # below 0: clamped
    inside = (level >= -128) & (level <= 127)
    np.testing.assert_allclose(ds, np.sum(g * np.where(inside, np.round(x / s) - x / s, q)), rtol=1e-4)


def test_binary_weights_are_scaled_signs():
    x = np.array([[0.3, -0.2, 0.0, -0.9]])
    s, g = np.array([0.5]), np.array([[1.0, 2.0, 3.0, 4.0]])
    loss, dx, ds = _run(FakeQuantSpec.for_bits(1), (1, 4), (1,), 0, 0, x, s, g)
    assert loss == pytest.approx(0.5 * (1 - 2 + 3 - 4))
    np.testing.assert_allclose(dx, [[1.0, 2.0, 3.0, 0.0]])  # |x| > s: no gradient
    np.testing.assert_allclose(ds, [1 - 2 + 3 - 4])
