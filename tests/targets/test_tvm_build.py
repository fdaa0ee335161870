"""Tests for targets/tvm: ONNX import, CPU schedules, shared-library build and run."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.targets.tvm import build, frontend, library_runner, schedules
from edgec.targets.tvm.translate import translate
from tests.helpers import legalize

tvm = pytest.importorskip("tvm")

HOST_TARGET = {
    "kind": "llvm",
    "mcpu": tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")(),
}


# ---------------------------------------------------------------------------- model helpers
def _const(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 0.1):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vi(name: str, shape: tuple[int, ...] | list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _conv_relu(cin=8, cout=32, hw=13, k=3, stride=1, pad=1, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    ho = (hw + 2 * pad - k) // stride + 1
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w", "b"],
            ["c"],
            kernel_shape=[k, k],
            strides=[stride] * 2,
            pads=[pad] * 4,
            name="conv",
        ),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    inits = [_const(rng, "w", (cout, cin, k, k), 0.3), _const(rng, "b", (cout,))]
    return _model(nodes, [_vi("x", (1, cin, hw, hw))], [_vi("y", (1, cout, ho, ho))], inits)


def _inputs(model: onnx.ModelProto, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    return [
        rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
        if i.name not in inits
    ]


def _ort(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs, strict=True)))


def _compile(model: onnx.ModelProto, path: pathlib.Path, target: dict | None = None):
    target = target or HOST_TARGET
    mod = build.optimize_for_cpu(translate(legalize(model)), target)
    build.build_shared_library(mod, target, path)
    return mod


def _check(model: onnx.ModelProto, tmp_path: pathlib.Path) -> None:
    lib = tmp_path / "model.so"
    _compile(model, lib)
    inputs = _inputs(model)
    got, _ = library_runner.run_shared_library(lib, [x[None] for x in inputs])
    got = [g[0] for g in got]
    want = _ort(model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- numerics vs ORT
@pytest.mark.parametrize(
    ("cin", "cout", "hw", "k", "stride", "pad"),
    [
        (8, 32, 13, 3, 1, 1),  # W=13: no tile divides except 13 itself
        (3, 16, 15, 3, 2, 0),  # 3 input channels, stride 2, no padding
        (16, 10, 8, 1, 1, 0),  # CO not a multiple of the vector width
    ],
)
def test_conv_bias_relu_matches_ort(tmp_path, cin, cout, hw, k, stride, pad):
    _check(_conv_relu(cin, cout, hw, k, stride, pad), tmp_path)


def test_gemm_matches_ort(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")]
    inits = [_const(rng, "w", (40, 64)), _const(rng, "b", (40,))]
    _check(_model(nodes, [_vi("x", (2, 64))], [_vi("y", (2, 40))], inits), tmp_path)


def test_pools_add_concat_dropout_sum_match_ort(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1], name="conv"),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], strides=[2, 2], name="maxpool"),
        helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[3, 3], strides=[2, 2], name="avgpool"),
        helper.make_node("Add", ["p", "a"], ["s"], name="add"),
        helper.make_node("Sum", ["s", "p", "a"], ["s3"], name="sum3"),
        helper.make_node("Concat", ["s3", "p"], ["cat"], axis=1, name="concat"),
        helper.make_node("Dropout", ["cat"], ["d"], name="dropout"),
        helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Softmax", ["f"], ["y"], axis=1, name="softmax"),
    ]
    inits = [_const(rng, "w", (16, 4, 1, 1), 0.5)]
    model = _model(nodes, [_vi("x", (1, 4, 17, 17))], [_vi("y", (1, 32))], inits)
    _check(model, tmp_path)


def test_batchnorm_residual_matches_ort(tmp_path):
    rng = np.random.default_rng(0)
    c = 16
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Sum", ["n", "x"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [
        _const(rng, "w", (c, c, 3, 3), 0.2),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(c)).astype(np.float32), "s"),
        _const(rng, "b", (c,)),
        _const(rng, "m", (c,)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), "v"),
    ]
    model = _model(nodes, [_vi("x", (1, c, 14, 14))], [_vi("y", (1, c, 14, 14))], inits)
    _check(model, tmp_path)


def test_tuple_outputs_are_flattened_in_order(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["x"], ["b"]),
    ]
    model = _model(nodes, [_vi("x", (2, 8))], [_vi("a", (2, 8)), _vi("b", (2, 8))])
    _check(model, tmp_path)


# ---------------------------------------------------------------------------- frontend errors
def test_unsupported_op_raises_naming_the_node():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("MyOp", ["r"], ["y"], name="my_custom_node", domain="com.example"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [_vi("x", (1, 4))], [_vi("y", (1, 4))]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    found = frontend.unsupported_nodes(model)
    assert [(n, op) for n, op, _ in found] == [("my_custom_node", "MyOp")]
    with pytest.raises(UnsupportedNodeError) as info:
        frontend.import_onnx(model)
    assert info.value.node_name == "my_custom_node"
    assert "my_custom_node" in str(info.value)


def test_lstm_is_unsupported():
    rng = np.random.default_rng(0)
    node = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4, name="lstm_0")
    inits = [_const(rng, "w", (1, 16, 3)), _const(rng, "r", (1, 16, 4))]
    model = _model([node], [_vi("x", (5, 1, 3))], [_vi("y", (5, 1, 1, 4))], inits)
    with pytest.raises(UnsupportedNodeError, match="no converter for LSTM") as info:
        frontend.import_onnx(model)
    assert info.value.op_type == "LSTM"
    assert info.value.node_name == "lstm_0"


def test_frontend_failure_is_an_edgec_error_naming_the_node():
    # A Reshape whose target shape is a run-time tensor: the frontend refuses it.
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="dynamic_reshape")]
    shape_in = helper.make_tensor_value_info("s", TensorProto.INT64, (2,))
    model = _model(nodes, [_vi("x", (2, 3)), shape_in], [_vi("y", (3, 2))])
    with pytest.raises(EdgecError) as info:
        frontend.import_onnx(model)
    assert not isinstance(info.value, UnsupportedNodeError)
    message = str(info.value)
    assert "TVM relax ONNX frontend" in message
    assert "Reshape 'dynamic_reshape'" in message
    assert "requires the input new shape" in message  # the frontend's own words survive
    assert info.value.__cause__ is not None


def test_dynamic_input_needs_a_shape():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["N", 4])], [_vi("y", ["N", 4])])
    with pytest.raises(EdgecError, match="no static shape"):
        frontend.import_onnx(model)
    mod = frontend.import_onnx(model, input_shapes={"x": (3, 4)})
    assert "3, 4" in mod["main"].script()


def test_import_does_not_modify_the_callers_model():
    nodes = [helper.make_node("Dropout", ["x"], ["y"], name="drop")]
    model = _model(nodes, [_vi("x", (1, 4))], [_vi("y", (1, 4))])
    before = model.SerializeToString()
    frontend.import_onnx(model)
    assert model.SerializeToString() == before


# ---------------------------------------------------------------------------- schedules
def test_conv_functions_are_scheduled():
    mod = build.optimize_for_cpu(frontend.import_onnx(_conv_relu()), HOST_TARGET)
    convs = {
        gv.name_hint: f
        for gv, f in mod.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint
    }
    assert convs
    for f in convs.values():
        assert f.attrs["tirx.is_scheduled"]
        script = f.script()
        assert "T.parallel" in script
        assert "T.vectorized" in script


@pytest.mark.parametrize(
    ("info", "width", "channels"),
    [
        (schedules.CpuVectorInfo(16, 32, 24), 13, 64),
        (schedules.CpuVectorInfo(16, 32, 24), 13, 1000),
        (schedules.CpuVectorInfo(8, 16, 13), 56, 64),
        (schedules.CpuVectorInfo(4, 32, 24), 7, 3),
    ],
)
def test_conv_tiles_divide_and_fit_registers(info, width, channels):
    wi, oc = schedules.Conv2dNHWC(info).pick_tiles(width, channels)
    vecs = -(-oc // info.lanes)
    assert width % wi == 0 and channels % oc == 0
    assert wi * vecs <= min(info.max_accumulators, info.registers - vecs - 1)


@pytest.mark.parametrize(
    ("target", "lanes"),
    [
        ({"kind": "llvm", "mcpu": "x86-64-v4"}, 16),
        ({"kind": "llvm", "mcpu": "x86-64-v3"}, 8),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, 4),
    ],
)
def test_vector_info_follows_the_target(target, lanes):
    assert schedules.cpu_vector_info(tvm.target.Target(target)).lanes == lanes


# ---------------------------------------------------------------------------- build and run
def test_build_is_atomic_and_byte_deterministic(tmp_path):
    model = _conv_relu()
    a, b = tmp_path / "a" / "m.so", tmp_path / "b" / "m.so"
    _compile(model, a)
    _compile(model, b)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert sorted(p.name for p in a.parent.iterdir()) == ["m.so"]  # no temp file left


def test_run_shared_library_runs_a_batch_and_times_the_first_sample(tmp_path):
    """One load of the library for the whole batch: each sample's outputs equal its own run."""
    lib = tmp_path / "m.so"
    model = _conv_relu()
    _compile(model, lib)
    samples = [_inputs(model, seed) for seed in range(3)]
    batch = [np.stack(values) for values in zip(*samples, strict=True)]
    outputs, times = library_runner.run_shared_library(lib, batch, repeat=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    for index, sample in enumerate(samples):
        (alone,), _ = library_runner.run_shared_library(lib, [x[None] for x in sample])
        np.testing.assert_array_equal(outputs[0][index], alone[0])
        np.testing.assert_allclose(alone[0], _ort(model, sample)[0], atol=1e-4, rtol=1e-4)


def test_missing_cross_compiler_is_a_toolchain_error(tmp_path):
    from edgec.errors import ToolchainError

    mod = build.optimize_for_cpu(frontend.import_onnx(_conv_relu()), HOST_TARGET)
    with pytest.raises(ToolchainError, match="not on PATH"):
        build.build_shared_library(mod, HOST_TARGET, tmp_path / "m.so", cc="no-such-gcc-xyz")


@pytest.mark.slow
def test_light_squeezenet_matches_ort(tmp_path):
    path = pathlib.Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    model = _randomized(onnx.load(str(path)))
    _check(model, tmp_path)


def _randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace the light models' ConstantOfShape weights with seeded He-initialised tensors."""
    rng = np.random.default_rng(seed)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, (node.op_type, k))
    kept, new, dropped = [], [], set()
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            kept.append(node)
            continue
        shape = tuple(numpy_helper.to_array(inits[node.input[0]]).tolist())
        op, k = users.get(node.output[0], ("", -1))
        if op in ("Conv", "Gemm") and k == 1:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif op == "BatchNormalization" and k == 4:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = 0.05 * rng.standard_normal(shape)
        new.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        dropped.add(node.input[0])
    del g.node[:]
    g.node.extend(kept)
    rest = [t for t in g.initializer if t.name not in dropped] + new
    del g.initializer[:]
    g.initializer.extend(rest)
    names = {t.name for t in rest} | dropped
    inputs = [i for i in g.input if i.name not in names]
    del g.input[:]
    g.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    return model
