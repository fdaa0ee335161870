"""The gradients edgec registers for relax.training, against finite differences of the forward."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from edgec.train.gradients import missing_gradients, register_gradients  # noqa: E402

# (name, input shape, forward) for one differentiable input each.
CASES = [
    ("conv2d", (2, 3, 5, 5), lambda x, w: relax.op.nn.conv2d(x, w, padding=[1, 1, 1, 1])),
    (
        "conv2d_stride2",
        (2, 3, 6, 6),
        lambda x, w: relax.op.nn.conv2d(x, w, strides=[2, 2], padding=[1, 1, 1, 1]),
    ),
    (
        "conv2d_nhwc",
        (2, 5, 5, 3),
        lambda x, w: relax.op.nn.conv2d(
            x,
            relax.op.permute_dims(w, [2, 3, 1, 0]),
            padding=[1, 1, 1, 1],
            data_layout="NHWC",
            kernel_layout="HWIO",
        ),
    ),
    (
        "conv2d_nhwc_grouped_strided",
        (2, 6, 6, 6),
        lambda x, w: relax.op.nn.conv2d(
            x,
            relax.op.permute_dims(w, [2, 3, 1, 0]),
            strides=[2, 2],
            padding=[1, 1, 1, 1],
            groups=2,
            data_layout="NHWC",
            kernel_layout="HWIO",
        ),
    ),
    ("max_pool2d", (2, 3, 4, 4), lambda x, w: relax.op.nn.max_pool2d(x, (2, 2), strides=(2, 2))),
    (
        "max_pool2d_nhwc",
        (2, 4, 4, 3),
        lambda x, w: relax.op.nn.max_pool2d(x, (2, 2), strides=(2, 2), layout="NHWC"),
    ),
    ("max_pool2d_overlapping", (2, 3, 5, 5), lambda x, w: relax.op.nn.max_pool2d(x, (3, 3), strides=(2, 2))),
    ("flatten", (2, 3, 2, 2), lambda x, w: relax.op.flatten(x)),
    ("squeeze", (2, 1, 4), lambda x, w: relax.op.squeeze(x, axis=[1])),
    ("clip", (2, 6), lambda x, w: relax.op.clip(x, -0.5, 0.5)),
    ("max", (2, 5), lambda x, w: relax.op.max(x, axis=[1])),
    ("adaptive_avg_pool2d", (2, 3, 4, 4), lambda x, w: relax.op.nn.adaptive_avg_pool2d(x, (2, 2))),
    ("gelu", (2, 6), lambda x, w: relax.op.nn.gelu(x)),
    ("gelu_tanh", (2, 6), lambda x, w: relax.op.nn.gelu_tanh(x)),
]
WEIGHT_SHAPE = (4, 3, 3, 3)


def _module(shape, forward, out_weights):
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    w = relax.Var("w", relax.TensorType(WEIGHT_SHAPE, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(forward(x, w))
            loss = bb.emit_output(relax.op.sum(relax.op.multiply(y, relax.const(out_weights(y), "float32"))))
        bb.emit_func_output(loss)
    return bb.get()


def _output_shape(shape, forward) -> list[int]:
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    w = relax.Var("w", relax.TensorType(WEIGHT_SHAPE, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("probe", [x, w]):
        with bb.dataflow():
            y = bb.emit(forward(x, w))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return [int(d) for d in y.ty.shape]


@pytest.fixture(scope="module")
def compiled():
    register_gradients()
    generator = np.random.default_rng(0)
    results = {}
    for name, shape, forward in CASES:
        out_shape = _output_shape(shape, forward)
        weights = generator.normal(size=out_shape).astype(np.float32)
        module = _module(shape, forward, lambda y, weights=weights: weights)
        params = list(module["main"].params)
        assert not missing_gradients(module["main"], params)
        module = relax.transform.Gradient("main", require_grads=params)(module)
        vm = relax.VirtualMachine(tvm.compile(module, "llvm"), tvm.cpu())
        results[name] = (vm, shape)
    return results


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_gradient_matches_finite_differences(compiled, name):
    vm, shape = compiled[name]
    generator = np.random.default_rng(1)
    x = generator.normal(size=shape).astype(np.float64)
    if name.startswith("max"):
        # Values 0.1 apart: every maximum is clear, so the derivative is defined at the point.
        x = generator.permutation(np.arange(x.size)).reshape(shape) * 0.1
    w = generator.normal(size=WEIGHT_SHAPE).astype(np.float64)

    def loss(a, b):
        return float(
            vm["main"](
                tvm.runtime.tensor(a.astype(np.float32)), tvm.runtime.tensor(b.astype(np.float32))
            ).numpy()
        )

    _, (grad_x, grad_w) = vm["main_adjoint"](
        tvm.runtime.tensor(x.astype(np.float32)), tvm.runtime.tensor(w.astype(np.float32))
    )
    step = 1e-2
    for value, grad, other in ((x, grad_x.numpy(), None), (w, grad_w.numpy(), x)):
        if other is not None and not name.startswith("conv2d"):
            continue
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[index] += step
            minus[index] -= step
            args = (plus, w) if other is None else (x, plus)
            args_minus = (minus, w) if other is None else (x, minus)
            numeric[index] = (loss(*args) - loss(*args_minus)) / (2 * step)
        if name == "clip":
            near_bound = np.abs(np.abs(x) - 0.5) < step
            numeric[near_bound] = grad[near_bound]
        np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=2e-2)


def test_ops_without_a_gradient_are_named():
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            shape_only = bb.emit(relax.op.round(relax.const(np.ones(4, np.float32))))
            y = bb.emit(relax.op.sum(relax.op.multiply(relax.op.round(x), shape_only)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    function = bb.get()["main"]
    # round(x) depends on the parameter: reported; round of a constant does not: left alone.
    assert missing_gradients(function, list(function.params)) == ["relax.round"]
