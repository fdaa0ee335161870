"""Hypothesis strategies for broken inputs: mutated ONNX models, malformed datasets and config
files, pipeline strings and flag values. Each draws a ``(description, payload)`` pair; the
description is what a failure prints, so a case can be read and replayed."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tests.conftest import conv_bn_relu_model
from tests.helpers import make_model


def mlp_model() -> onnx.ModelProto:
    """MatMul → Add → Reshape → Softmax with a symbolic batch: shape tensors and a dynamic dim."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["a"], name="add"),
        helper.make_node("Reshape", ["a", "shape"], ["r"], name="reshape"),
        helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=-1),
    ]
    inits = {
        "w": rng.normal(0, 0.3, (16, 6)).astype(np.float32),
        "b": rng.normal(0, 0.1, 6).astype(np.float32),
        "shape": np.array([-1, 6], np.int64),
    }
    return make_model(
        nodes, {"x": (TensorProto.FLOAT, ["N", 16])}, {"y": (TensorProto.FLOAT, ["N", 6])}, inits, name="mlp"
    )


BASES = {"convnet": conv_bn_relu_model(), "mlp": mlp_model()}
DTYPES = [
    TensorProto.UNDEFINED,
    TensorProto.FLOAT16,
    TensorProto.DOUBLE,
    TensorProto.INT8,
    TensorProto.INT64,
    TensorProto.BOOL,
    TensorProto.STRING,
    TensorProto.COMPLEX64,
    TensorProto.BFLOAT16,
    TensorProto.FLOAT8E4M3FN,
    99,
]
DIMS = [0, 1, 2, 3, 7, -1, -5, 2**31, 2**40, 2**62]
# Where external data may point: outside the folder, at devices, at nothing.
EXTERNAL_LOCATIONS = [
    "../secret.bin",
    "../../etc/passwd",
    "/etc/passwd",
    "/dev/zero",
    "/dev/urandom",
    "/dev/null",
    "/proc/self/mem",
    "sub/../../secret.bin",
    "missing.bin",
    "weights.bin",
    "",
    ".",
    "weights.bin\x00.txt",
    "link.bin",
]


def _node_index(draw, model: onnx.ModelProto) -> int:
    return draw(st.integers(0, len(model.graph.node) - 1))


def _value_infos(model: onnx.ModelProto):
    return [*model.graph.input, *model.graph.output, *model.graph.value_info]


def mutate_delete_node(draw, model):
    i = _node_index(draw, model)
    del model.graph.node[i]
    return f"delete node {i}"


def mutate_duplicate_node(draw, model):
    i = _node_index(draw, model)
    model.graph.node.append(model.graph.node[i])
    return f"duplicate node {i}"


def mutate_wrong_dim(draw, model):
    infos = [v for v in _value_infos(model) if v.type.tensor_type.shape.dim]
    v = infos[draw(st.integers(0, len(infos) - 1))]
    dims = v.type.tensor_type.shape.dim
    d = draw(st.integers(0, len(dims) - 1))
    value = draw(st.sampled_from([*DIMS, "sym", ""]))
    if isinstance(value, str):
        dims[d].dim_param = value
    else:
        dims[d].dim_value = value
    return f"{v.name} dim {d} = {value!r}"


def mutate_drop_rank(draw, model):
    v = model.graph.input[0]
    keep = draw(st.integers(0, 5))
    dims = list(v.type.tensor_type.shape.dim)
    v.type.tensor_type.shape.ClearField("dim")
    for _ in range(keep):
        v.type.tensor_type.shape.dim.add().dim_value = draw(st.sampled_from([1, 3, 8, 16]))
    return f"input rank {len(dims)} → {keep}"


def mutate_unknown_op(draw, model):
    i = _node_index(draw, model)
    op = draw(st.sampled_from(["FrobConv", "", "Conv2", "conv", "Loop", "If", "Scan", "NonMaxSuppression"]))
    domain = draw(st.sampled_from(["", "com.example", "ai.onnx.ml", "com.microsoft"]))
    model.graph.node[i].op_type = op
    model.graph.node[i].domain = domain
    return f"node {i} op {domain}:{op!r}"


def mutate_dtype(draw, model):
    where = draw(st.sampled_from(["input", "output", "initializer"]))
    dtype = draw(st.sampled_from(DTYPES))
    if where == "initializer":
        inits = model.graph.initializer
        i = draw(st.integers(0, len(inits) - 1))
        inits[i].data_type = dtype
        return f"initializer {inits[i].name} dtype {dtype}"
    v = getattr(model.graph, where)[0]
    v.type.tensor_type.elem_type = dtype
    return f"{where} {v.name} dtype {dtype}"


def mutate_dangling_input(draw, model):
    i = _node_index(draw, model)
    node = model.graph.node[i]
    j = draw(st.integers(0, max(0, len(node.input) - 1)))
    name = draw(st.sampled_from(["ghost", "", "y", node.output[0]]))
    if node.input:
        node.input[j] = name
    else:
        node.input.append(name)
    return f"node {i} input {j} = {name!r}"


def mutate_cycle(draw, model):
    last = model.graph.node[-1].output[0]
    i = draw(st.integers(0, len(model.graph.node) - 1))
    model.graph.node[i].input[0] = last
    return f"cycle: node {i} reads {last}"


def mutate_huge_shape(draw, model):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim in dims:
        dim.dim_value = draw(st.sampled_from([2**16, 2**20, 2**31 - 1, 2**40]))
    return "huge input shape " + "x".join(str(d.dim_value) for d in dims)


def mutate_attribute(draw, model):
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return "no attribute to mutate"
    node = nodes[draw(st.integers(0, len(nodes) - 1))]
    attr = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
    value = draw(st.sampled_from([-7, -1, 0, 99, 2**40]))
    if attr.ints:
        attr.ints[draw(st.integers(0, len(attr.ints) - 1))] = value
    elif attr.type == onnx.AttributeProto.INT:
        attr.i = value
    else:
        attr.type = onnx.AttributeProto.STRING
        attr.s = b"garbage"
    return f"{node.name}.{attr.name} = {value}"


def mutate_opset(draw, model):
    version = draw(st.sampled_from([0, 1, 6, 9, 11, 13, 21, 26, 999]))
    model.opset_import[0].version = version
    return f"opset {version}"


def mutate_initializer_bytes(draw, model):
    inits = model.graph.initializer
    init = inits[draw(st.integers(0, len(inits) - 1))]
    how = draw(st.sampled_from(["truncate", "extend", "dims"]))
    if how == "truncate":
        init.raw_data = init.raw_data[: len(init.raw_data) // 2]
    elif how == "extend":
        init.raw_data = init.raw_data + b"\x00" * 12
    else:
        init.dims[0] = draw(st.sampled_from(DIMS))
    return f"initializer {init.name} {how}"


def mutate_io_lists(draw, model):
    what = draw(st.sampled_from(["no outputs", "no inputs", "output not produced", "input twice"]))
    if not (model.graph.input and model.graph.output):
        return "inputs or outputs already gone"
    if what == "no outputs":
        del model.graph.output[:]
    elif what == "no inputs":
        del model.graph.input[:]
    elif what == "output not produced":
        model.graph.output[0].name = "never_made"
    else:
        model.graph.input.append(model.graph.input[0])
    return what


def mutate_external(draw, model):
    inits = model.graph.initializer
    init = inits[draw(st.integers(0, len(inits) - 1))]
    location = draw(st.sampled_from(EXTERNAL_LOCATIONS))
    length = draw(st.sampled_from([None, 0, 4, len(init.raw_data), 2**40]))
    offset = draw(st.sampled_from([None, 0, 3, 2**40, -1]))
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    init.external_data.add(key="location", value=location)
    if length is not None:
        init.external_data.add(key="length", value=str(length))
    if offset is not None:
        init.external_data.add(key="offset", value=str(offset))
    return f"initializer {init.name} external {location!r} offset {offset} length {length}"


PROTO_MUTATIONS = [
    mutate_delete_node,
    mutate_duplicate_node,
    mutate_wrong_dim,
    mutate_drop_rank,
    mutate_unknown_op,
    mutate_dtype,
    mutate_dangling_input,
    mutate_cycle,
    mutate_huge_shape,
    mutate_attribute,
    mutate_opset,
    mutate_initializer_bytes,
    mutate_io_lists,
    mutate_external,
]


# Mutations whose models often pass the ONNX checker: they reach the passes, TVM and the toolchain.
SEMANTIC_MUTATIONS = [mutate_attribute, mutate_opset, mutate_wrong_dim, mutate_unknown_op, mutate_dtype]


@st.composite
def broken_models(draw, mutations=tuple(PROTO_MUTATIONS), raw_bytes: bool = True) -> tuple[str, bytes]:
    """A base model with one to three structural mutations, then maybe byte flips or a cut."""
    base = draw(st.sampled_from(sorted(BASES)))
    model = onnx.ModelProto()
    model.CopyFrom(BASES[base])
    steps = [base]
    for mutate in draw(
        st.lists(st.sampled_from(list(mutations)), min_size=0 if raw_bytes else 1, max_size=3)
    ):
        try:
            steps.append(mutate(draw, model))
        except IndexError:  # an earlier mutation removed what this one edits
            steps.append(f"{mutate.__name__} skipped")
    data = bytearray(model.SerializeToString())
    raw = draw(st.sampled_from(["none", "none", "flip", "cut"])) if raw_bytes else "none"
    if raw == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            bit = draw(st.integers(0, 7))
            data[pos] ^= 1 << bit
            steps.append(f"flip byte {pos} bit {bit}")
    elif raw == "cut":
        pos = draw(st.integers(0, len(data)))
        data = data[:pos]
        steps.append(f"cut at {pos}")
    return " | ".join(steps), bytes(data)


# -- datasets --------------------------------------------------------------------------------------
NPZ_ARRAYS = st.sampled_from(
    [
        ("x ok", {"x": np.zeros((1, 3, 8, 8), np.float32)}),
        ("x batch 3", {"x": np.ones((3, 1, 3, 8, 8), np.float32)}),
        ("x float64", {"x": np.zeros((1, 3, 8, 8), np.float64)}),
        ("x int8", {"x": np.zeros((1, 3, 8, 8), np.int8)}),
        ("x wrong shape", {"x": np.zeros((1, 3, 8, 9), np.float32)}),
        ("x scalar", {"x": np.float32(1.0)}),
        ("x empty", {"x": np.zeros((0, 1, 3, 8, 8), np.float32)}),
        ("x nan", {"x": np.full((1, 3, 8, 8), np.nan, np.float32)}),
        ("x inf", {"x": np.full((1, 3, 8, 8), np.inf, np.float32)}),
        ("x strings", {"x": np.array(["a", "b"])}),
        ("x objects", {"x": np.array([{"a": 1}], dtype=object)}),
        ("x + extra", {"x": np.zeros((1, 3, 8, 8), np.float32), "z": np.zeros(3, np.float32)}),
        ("no x", {"wrong": np.zeros((1, 3, 8, 8), np.float32)}),
        ("empty npz", {}),
        ("x + labels", {"x": np.zeros((2, 1, 3, 8, 8), np.float32), "labels": np.array([0, 9])}),
        ("x complex", {"x": np.zeros((1, 3, 8, 8), np.complex64)}),
        ("x 5 dims flat", {"x": np.zeros(192, np.float32)}),
    ]
)


@st.composite
def broken_npz(draw) -> tuple[str, bytes]:
    """An .npz file: well-formed with wrong contents, or a corrupted archive."""
    label, arrays = draw(NPZ_ARRAYS)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = bytearray(buffer.getvalue())
    how = draw(st.sampled_from(["as is", "as is", "flip", "cut", "not zip", "zip of text"]))
    if how == "flip" and data:
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] ^= 0xFF
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "not zip":
        data = bytearray(draw(st.binary(max_size=64)))
    elif how == "zip of text":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("x.npy", draw(st.binary(max_size=80)))
        data = bytearray(buffer.getvalue())
    return f"npz {label}, {how}", bytes(data)


# -- config files, pipelines, flag values ---------------------------------------------------------
CONFIG_KEYS = [
    "target",
    "pipeline",
    "seed",
    "quantize",
    "flash_budget",
    "ram_budget",
    "input_shapes",
    "freeze_inputs",
    "simplify",
    "verify",
    "name",
    "rounding",
    "prune",
    "epochs",
    "calib",
    "max_accuracy_drop",
    "targett",
    "[table]",
]
TOML_VALUES = st.sampled_from(
    [
        "'x86'",
        "'cortex-m4'",
        "'z80'",
        "1",
        "-1",
        "1e400",
        "nan",
        "true",
        "[]",
        "[1, 'a']",
        "{}",
        "{x = '1x3x8x8'}",
        "{x = 5}",
        "'default'",
        "'fuse-conv-bn{'",
        "2024-01-01",
        "'\\u0000'",
        "'''multi\nline'''",
        '"unterminated',
        "= =",
    ]
)


@st.composite
def broken_configs(draw) -> tuple[str, str]:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(CONFIG_KEYS))
        lines.append(key if key.startswith("[") else f"{key} = {draw(TOML_VALUES)}")
    if draw(st.booleans()):
        lines.append(draw(st.text(max_size=30)))
    text = "\n".join(lines) + "\n"
    return text, text


PASS_NAMES = [
    "default",
    "simplify",
    "fuse-conv-bn",
    "fold-constants",
    "eliminate-dead-nodes",
    "quantize",
    "prune-magnitude",
    "no-such-pass",
    "",
]
PIPELINE_TOKENS = st.one_of(
    st.sampled_from(PASS_NAMES),
    st.sampled_from(
        [
            ",",
            ",,",
            "{",
            "}",
            "{}",
            "{x=1}",
            "{sparsity=2}",
            "{sparsity=-1}",
            "{sparsity=0.5}",
            "{scheme=int8}",
            "{scheme=int3}",
            "(",
            ")",
            "*",
            "=",
            "'",
            '"',
            " ",
            "\n",
            "\x00",
        ]
    ),
    st.text(max_size=6),
)
pipelines = st.lists(PIPELINE_TOKENS, min_size=0, max_size=8).map("".join)

SHAPE_VALUES = st.one_of(
    st.sampled_from(
        [
            "x=1x3x8x8",
            "x=",
            "=1x3",
            "x",
            "x=0x3x8x8",
            "x=-1x3x8x8",
            "x=1x3x8x8x1",
            "y=1x4",
            "x=99999999999x3x8x8",
            "x=1.5x3x8x8",
            "x=axbxcxd",
            "N=1",
            "x=1,3,8,8",
            "x==1",
        ]
    ),
    st.text(max_size=12),
)
FLAG_VALUES = {
    "--input-shape": SHAPE_VALUES,
    "--quantize": st.sampled_from(["int8", "int4", "fp16", "weight-int2", "binary", "", "INT8", "int8x"]),
    "--calibration": st.sampled_from(["minmax", "entropy", "percentile{p=200}", "x", ""]),
    "--seed": st.sampled_from(["0", "-1", "2**70", "99999999999999999999", "x", ""]),
    "--prune": st.sampled_from(["0.5", "1", "1.5", "-0.1", "nan", "inf", "x"]),
    "--prune-channels": st.sampled_from(["0.3", "0.99", "1", "2", "-1", "nan"]),
    "--prune-nm": st.sampled_from(["2:4", "4:2", "0:4", "1:1", "x:y", "2:0", ":", "2:4:8"]),
    "--freeze-input": st.sampled_from(["x=1", "x=", "x=missing.npy", "z=1", "x=[1,2]", "=", "x=nan"]),
    "--name": st.sampled_from(["model", "1bad", "has space", "x" * 300, "_", "", "int", "main", "a-b"]),
    "--epochs": st.sampled_from(["1", "0", "-3", "x"]),
    "--target": st.sampled_from(["x86", "cortex-m4", "z80", "", "X86", "cortex-m4 "]),
}
# Flags only compile takes: budgets (exit 3 when missed), gates, the C prefix, rounding.
COMPILE_FLAG_VALUES = {
    "--flash-budget": st.sampled_from(["1", "0", "-5", "4096", "1048576", "x", "1e9"]),
    "--ram-budget": st.sampled_from(["1", "0", "512", "131072", "-1"]),
    "--max-accuracy-drop": st.sampled_from(["0.01", "-1", "nan", "2"]),
    "--rounding": st.sampled_from(["single", "double", "triple", ""]),
    "--name": FLAG_VALUES["--name"],
    "--quantize": FLAG_VALUES["--quantize"],
    "--input-shape": SHAPE_VALUES,
    "--seed": FLAG_VALUES["--seed"],
}
