"""Sparse weights (the sparse-weights legalization, targets/tvm/sparse_layout.py, sparse_kernels.py,
sparse_schedule.py): stored compressed, read so by the conv/matmul kernels.

The checks: the formats round-trip exactly; the kernels equal a dense convolution (integers
exactly, floats within fp32 rounding) over strides, dilations, groups, batches and both formats;
the legal graph of a pruned model shows ``edgec.SparseWeight`` nodes (format, bytes) and the pass
says why a weight stays dense; a pruned int8 model built for x86 is bit-exact with the numpy
reference of the integer kernels and with its dense build, a float one within fp32 tolerance of
onnxruntime; the epilogue is computed per row (no whole-output accumulator); the digits CNN
through ``edgec compile`` (manifest, ``--dump-after``) and on Cortex-M4 under qemu (slow).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgec
from edgec.capabilities import Capabilities
from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.ir import EdgeGraph, op_sequence
from edgec.passes.pruning.magnitude import nm_mask
from edgec.pm import PassContext, PassManager
from edgec.targets import get_target
from edgec.targets.integer.arith import conv_sum, pad
from edgec.targets.integer.reference import run_reference
from edgec.targets.tvm.sparse_layout import (
    SPARSE_OP,
    SparseWeight,
    decode,
    encode,
    nm_pattern,
    rows_of,
    spec_of,
)
from edgec.verify import random_inputs, run_onnx
from tests.helpers import DIGITS, FP32_ATOL, FP32_RTOL, covers, make_model, run_pipeline
from tests.targets.cortex_helpers import needs_tools

tvm = pytest.importorskip("tvm")

F = TensorProto.FLOAT


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv (pads), grouped strided Conv, dilated Conv, pool, Gemm (transB), MatMul: 1x8x10x10 → 1x6."""
    r = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (r.standard_normal(shape) * 0.4).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node(
            "Conv", ["ra", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1], strides=[2, 2], group=2
        ),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node(
            "Conv", ["rb", "wc", "bc"], ["c"], name="conv_c", pads=[2, 2, 2, 2], dilations=[2, 2]
        ),
        helper.make_node("Relu", ["c"], ["rc"]),
        helper.make_node("GlobalAveragePool", ["rc"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wd", "bd"], ["d"], name="gemm_d", transB=1),
        helper.make_node("Relu", ["d"], ["rd"]),
        helper.make_node("MatMul", ["rd", "we"], ["y"], name="matmul_e"),
    ]
    init = {
        "wa": w(16, 8, 3, 3), "ba": w(16), "wb": w(16, 8, 3, 3), "wc": w(16, 16, 3, 3), "bc": w(16),
        "wd": w(12, 16), "bd": w(12), "we": w(12, 6),
    }  # fmt: skip
    return make_model(nodes, {"x": (F, [1, 8, 10, 10])}, {"y": (F, [1, 6])}, init, name="small_cnn")


def _calibration(count: int = 16) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(3).standard_normal((count, 1, 8, 10, 10)).astype(np.float32)}


def _legal(graph: EdgeGraph, target: str = "x86", sparse: bool = True) -> tuple[EdgeGraph, dict]:
    """The legal graph for ``target`` and the sparse-weights statistics."""
    chosen = dataclasses.replace(get_target(target), sparse_weights=sparse)
    run = chosen.legalize(graph.copy())
    stats = next(r.stats for r in run.records if r.name == "sparse-weights")
    return run.graph, stats


def _vm(legal: EdgeGraph):
    from tvm import relax

    from edgec.targets.tvm.build import optimize_for_cpu
    from edgec.targets.tvm.translate import translate
    from edgec.targets.x86 import host_cpu_name

    target = {"kind": "llvm", "mcpu": host_cpu_name()}
    module = optimize_for_cpu(translate(legal), target)
    return relax.VirtualMachine(tvm.compile(module, tvm.target.Target(target)), tvm.cpu()), module


def _run(vm, x: np.ndarray) -> np.ndarray:
    return vm["main"](tvm.runtime.tensor(x)).numpy()


# --------------------------------------------------------------------------------------------
# the formats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "shape"),
    [("conv", (8, 6, 3, 3)), ("conv", (4, 8, 5)), ("matmul", (16, 10)), ("matmul-transposed", (10, 13))],
)
@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_bitmap_round_trips_and_is_as_small_as_stated(layout, shape, dtype):
    r = np.random.default_rng(1)
    weight = (r.standard_normal(shape) * 50).astype(dtype)
    weight[r.random(shape) < 0.7] = 0
    spec = SparseWeight("w", "bitmap", layout, shape, dtype)
    encoded = encode(weight, spec)
    np.testing.assert_array_equal(decode(spec, encoded.values, encoded.index), weight)
    rows = rows_of(weight, layout)
    assert encoded.values.size == np.count_nonzero(weight)
    assert encoded.index.nbytes == rows.shape[0] * -(-rows.shape[1] // 8)  # a bit per weight, rows in bytes


def test_nm_round_trips_along_the_input_channels_and_points_empty_slots_at_zeros():
    r = np.random.default_rng(2)
    weight = r.integers(-127, 128, (6, 8, 3, 3)).astype(np.int8)
    weight = np.where(nm_mask(weight.astype(np.float32), 1, 2, 4), weight, 0).astype(np.int8)
    weight[0, :4, 0, 0] = [0, 0, 0, 5]  # a group with one non-zero: one empty slot
    assert nm_pattern(rows_of(weight, "conv")) == (2, 4)
    spec = SparseWeight("w", "nm", "conv", weight.shape, "int8", 2, 4)
    encoded = encode(weight, spec)
    assert encoded.values.size == weight.size // 2 and encoded.index.nbytes == weight.size // 2 * 2 // 8
    np.testing.assert_array_equal(decode(spec, encoded.values, encoded.index), weight)
    dense = weight.copy()
    dense[0, :2, 0, 0] = 1  # three non-zeros in a group of four: not 2:4
    with pytest.raises(EdgecError, match="does not fit 2:4"):
        encode(dense, spec)


# --------------------------------------------------------------------------------------------
# the kernels
# --------------------------------------------------------------------------------------------

# (batch, channels, height, width, rows, groups, kernel, stride, dilation, pads)
GEOMETRIES = [
    (1, 16, 8, 8, 32, 1, (3, 3), 1, 1, (1, 1, 1, 1)),
    (2, 8, 9, 7, 12, 2, (3, 2), 2, 1, (0, 1, 2, 0)),
    (1, 8, 10, 10, 8, 8, (3, 3), 1, 2, (2, 2, 2, 2)),  # depthwise, dilated
    (1, 16, 6, 6, 24, 1, (1, 1), 1, 1, (0, 0, 0, 0)),
    (1, 8, 16, 13, 32, 1, (3, 3), 1, 1, (1, 1, 1, 1)),  # 32x16x13 outputs: rows in parallel; a part tile
]


def _kernel_module(cases):
    """One Relax module with a function per case (one compile for all)."""
    from tvm import relax

    from edgec.targets.tvm.sparse_kernels import emit_sparse_conv2d, emit_sparse_matmul

    bb = relax.BlockBuilder()
    for index, (x, build) in enumerate(cases):
        xv = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
        with bb.function(f"case{index}", [xv]):
            with bb.dataflow():
                out = bb.emit_output(build(bb, xv, emit_sparse_conv2d, emit_sparse_matmul))
            bb.emit_func_output(out)
    return relax.VirtualMachine(tvm.compile(bb.get(), "llvm"), tvm.cpu())


def test_sparse_kernels_equal_dense_convolutions_and_matmuls():
    """int8: exactly the dense sums (bitmap and 2:4; strides, dilations, groups, batches,
    padding by the zero point); float32: within fp32 rounding (the sums are reordered)."""
    r = np.random.default_rng(4)
    cases, expected = [], []
    for fmt in ("bitmap", "nm"):
        for dtype in ("int8", "float32"):
            for batch, channels, h, w_, rows, groups, kernel, stride, dilation, pads in GEOMETRIES:
                shape = (rows, channels // groups, *kernel)
                if fmt == "nm" and shape[1] % 4:
                    continue
                if dtype == "int8":
                    weight = r.integers(-127, 128, shape).astype(np.int8)
                    x = r.integers(-128, 128, (batch, channels, h, w_)).astype(np.int8)
                else:
                    weight = r.standard_normal(shape).astype(np.float32)
                    x = r.standard_normal((batch, channels, h, w_)).astype(np.float32)
                if fmt == "nm":
                    weight = np.where(nm_mask(weight.astype(np.float32), 1, 2, 4), weight, 0).astype(dtype)
                    spec = SparseWeight("w", "nm", "conv", shape, dtype, *nm_pattern(rows_of(weight, "conv")))
                else:
                    weight[r.random(shape) < 0.7] = 0
                    spec = SparseWeight("w", "bitmap", "conv", shape, dtype)
                encoded = encode(weight, spec)
                zero = 3 if dtype == "int8" else 0
                acc = "int32" if dtype == "int8" else "float32"
                steps = ([stride] * 2, list(pads), [dilation] * 2, groups, acc, zero)

                def build(bb, xv, conv, _matmul, encoded=encoded, steps=steps):
                    strides, pads_, dilations, groups_, acc_, zero_ = steps
                    return conv(bb, xv, encoded, strides, pads_, dilations, groups_, acc_, zero_)

                cases.append((x, build))
                if dtype == "int8":
                    padded = pad(x.astype(np.float64), pads, zero)
                    strides, dilations = [stride] * 2, [dilation] * 2
                    expected.append(conv_sum(padded, weight.astype(np.float64), strides, dilations, groups))
                else:
                    expected.append(_onnx_conv(x, weight, stride, dilation, groups, pads))
    for layout in ("matmul", "matmul-transposed"):
        for lead in ([1], [3, 5]):
            weight = r.integers(-127, 128, (32, 10)).astype(np.int8)
            weight[r.random(weight.shape) < 0.8] = 0
            stored = weight if layout == "matmul" else np.ascontiguousarray(weight.T)
            encoded = encode(stored, SparseWeight("w", "bitmap", layout, stored.shape, "int8"))
            x = r.integers(-128, 128, (*lead, 32)).astype(np.int8)
            cases.append((x, lambda bb, xv, _conv, matmul, encoded=encoded: matmul(bb, xv, encoded, "int32")))
            expected.append(x.astype(np.int64) @ weight.astype(np.int64))
    vm = _kernel_module(cases)
    for index, ((x, _), want) in enumerate(zip(cases, expected, strict=True)):
        got = vm[f"case{index}"](tvm.runtime.tensor(x)).numpy()
        if got.dtype == np.int32:
            np.testing.assert_array_equal(got, want, err_msg=f"case {index}")
        else:
            np.testing.assert_allclose(got, want, atol=FP32_ATOL, rtol=FP32_RTOL, err_msg=f"case {index}")


def _onnx_conv(x, weight, stride, dilation, groups, pads) -> np.ndarray:
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=list(pads), strides=[stride] * 2,
                            dilations=[dilation] * 2, group=groups)  # fmt: skip
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", F, list(x.shape))],
        [helper.make_tensor_value_info("y", F, None)], [onnx.numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return run_onnx(model, {"x": x})["y"]


# --------------------------------------------------------------------------------------------
# the legalization
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_int8() -> EdgeGraph:
    pipeline = "prune-magnitude{sparsity=0.8},quantize{scheme=int8}"
    graph, _ = run_pipeline(pipeline, _small_cnn(), verify=False, calibration=_calibration())
    return graph


@covers("sparse-weights", kind="structural")
def test_legal_graph_shows_each_sparse_weight_read_by_its_kernel(pruned_int8):
    legal, stats = _legal(pruned_int8)
    sparse = [node for node in legal.nodes if node.op == SPARSE_OP]
    readers = {node.outputs[0].outputs[0].name: node.outputs[0].outputs[0].op for node in sparse}
    assert readers == {
        "conv_a": "IntegerConv", "conv_b": "IntegerConv", "conv_c": "IntegerConv",
        "gemm_d": "IntegerMatMul", "matmul_e": "IntegerMatMul",
    }  # fmt: skip
    text = legal.text()
    assert "edgec.SparseWeight(" in text and "format='bitmap'" in text and "stored_bytes=" in text
    for node in sparse:
        encoded = spec_of(node)
        assert node.attrs["stored_bytes"] == encoded.stored_bytes < node.attrs["dense_bytes"]
    rows = {row["node"]: row for row in stats["weights"]}
    assert rows["conv_a"]["format"] == "bitmap" and rows["conv_a"]["dense_bytes"] == 16 * 8 * 9
    assert stats["stored_bytes"] < stats["dense_bytes"] / 2.5  # 80% zeros of int8: a third of dense
    assert stats["formats"] == ["bitmap", "nm"]


@covers("sparse-weights", kind="numeric")
def test_int8_build_is_bit_exact_with_the_reference_and_the_dense_build(pruned_int8):
    legal, _ = _legal(pruned_int8)
    dense_legal, dense_stats = _legal(pruned_int8, sparse=False)
    assert not any(node.op == SPARSE_OP for node in dense_legal.nodes) and dense_stats["sparse"] == 0
    vm, module = _vm(legal)
    dense_vm, _ = _vm(dense_legal)
    names = [gv.name_hint for gv in module.get_global_vars()]
    assert sum("edgec_sparse" in name for name in names) == 5
    for seed in range(3):
        x = random_inputs(legal, seed=seed)["x"]
        want = run_reference(legal, {"x": x})["y"]
        got = _run(vm, x)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, _run(dense_vm, x))


def test_float_build_is_within_fp32_tolerance_of_onnxruntime():
    graph, _ = run_pipeline("prune-nm{n=2,m=4}", _small_cnn(), verify=False)
    conv_c = graph.node("conv_c").inputs[1]
    thinned = np.asarray(conv_c.values).copy()
    thinned[np.random.default_rng(6).random(thinned.shape) < 0.6] = 0  # sparser than 2:4: a bitmap
    conv_c.values = thinned
    legal, stats = _legal(graph)
    formats = {row["node"]: row["format"] for row in stats["weights"]}
    # 2:4 of float32 takes 2 + 1/8 bytes per weight, like a bitmap of half the weights: a tie, N:M.
    assert formats == {
        "conv_a": "2:4",
        "conv_b": "2:4",
        "conv_c": "bitmap",
        "gemm_d": "2:4",
        "matmul_e": "2:4",
    }
    assert [n.outputs[0].outputs[0].op for n in legal.nodes if n.op == SPARSE_OP] == [
        "Conv", "Conv", "Conv", "Gemm", "MatMul"
    ]  # fmt: skip
    vm, _ = _vm(legal)
    model = graph.to_onnx()
    for seed in range(2):
        feeds = random_inputs(graph, seed=seed)
        np.testing.assert_allclose(
            _run(vm, feeds["x"]), run_onnx(model, feeds)["y"], atol=FP32_ATOL, rtol=FP32_RTOL
        )


def test_epilogue_is_computed_per_row(pruned_int8):
    """The requantization is fused into each sparse conv kernel and runs under its row loop: the
    int32 accumulator is one row (stack), not the whole output (conv_a's would be 6400 bytes of
    workspace in the arena)."""
    from edgec.targets.tvm.kernel_memory import kernel_memory
    from edgec.targets.x86 import host_cpu_name

    legal, _ = _legal(pruned_int8)
    _, module = _vm(legal)
    fused = [gv.name_hint for gv in module.get_global_vars() if gv.name_hint.startswith("fused_edgec_sparse")]
    assert len(fused) >= 3  # the three convolutions with their requantization
    memory = kernel_memory(module, {"kind": "llvm", "mcpu": host_cpu_name()})
    assert all(memory[name].workspace_bytes == 0 for name in fused), {n: memory[n] for n in fused}


@covers("sparse-weights", kind="negative")
def test_weights_that_stay_dense_say_why():
    """2 % zeros: a bitmap (1/8 B per weight) plus 98 % of the float32 values is not smaller than
    dense (break-even: 1/32 zeros); no zeros; a shared weight; a 3-D convolution; a target that
    declares no format, or none that fits."""
    r = np.random.default_rng(5)
    few = r.standard_normal((16, 8, 3, 3)).astype(np.float32)
    few[r.random(few.shape) < 0.02] = 0
    shared = r.standard_normal((8, 8)).astype(np.float32)
    shared[r.random(shared.shape) < 0.9] = 0
    conv3d = r.standard_normal((4, 8, 3, 3, 3)).astype(np.float32)
    conv3d[r.random(conv3d.shape) < 0.9] = 0
    nodes = [
        helper.make_node("Conv", ["x", "few"], ["a"], name="few_zeros", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "none"], ["b"], name="no_zeros", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["b"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "shared"], ["c"], name="shared_1"),
        helper.make_node("MatMul", ["c", "shared"], ["y"], name="shared_2"),
        helper.make_node("Conv", ["v", "w3"], ["z"], name="conv_3d"),
    ]
    init = {"few": few, "none": np.ones((8, 16, 3, 3), np.float32), "shared": shared, "w3": conv3d}
    inputs = {"x": (F, [1, 8, 6, 6]), "v": (F, [1, 8, 5, 5, 5])}
    model = make_model(nodes, inputs, {"y": (F, [1, 8]), "z": (F, [1, 4, 3, 3, 3])}, init, opset=17)
    graph = EdgeGraph.from_onnx(model)
    legal, stats = _legal(graph)
    assert SPARSE_OP not in op_sequence(legal)
    reasons = {row["node"]: row["reason"] for row in stats["weights"]}
    assert reasons["few_zeros"].startswith("not smaller than dense: bitmap takes")
    assert reasons["no_zeros"] == "it has no zeros"
    assert reasons["shared_1"] == reasons["shared_2"] == "'shared' is shared by 2 readers"
    assert reasons["conv_3d"] == "a 3-D convolution has no sparse kernel (1-D and 2-D only)"
    assert all(
        row["format"] == "dense" and row["stored_bytes"] == row["dense_bytes"] for row in stats["weights"]
    )
    # 75 % zeros, but its first 16 weights (in the kernels' order) all non-zero: no N:M group fits.
    clustered = np.zeros((1, 8, 1, 8), np.float32)
    clustered[0, :, 0, :2] = 1.5
    single = make_model([nodes[0]], {"x": (F, [1, 8, 6, 6])}, {"a": (F, [1, 1, 6, 1])}, {"few": clustered})
    run = PassManager("sparse-weights", PassContext(capabilities=get_target("x86").capabilities())).run(
        EdgeGraph.from_onnx(single)
    )
    assert run.records[-1].stats["weights"][0]["format"] == "bitmap"
    none = Capabilities(target="plain")
    run = PassManager("sparse-weights", PassContext(capabilities=none)).run(EdgeGraph.from_onnx(single))
    row = run.records[-1].stats["weights"][0]
    assert (
        row["reason"] == "target 'plain' declares no sparse format (or --no-sparse-weights switched them off)"
    )
    only_nm = Capabilities(target="nm-only", sparse_formats=frozenset({"nm"}))
    run = PassManager("sparse-weights", PassContext(capabilities=only_nm)).run(EdgeGraph.from_onnx(single))
    assert (
        run.records[-1]
        .stats["weights"][0]["reason"]
        .startswith("no format target 'nm-only' decodes (nm) fits")
    )
    with pytest.raises(EdgecError, match="unknown sparse format"):
        PassManager("sparse-weights{formats=csr}", PassContext(capabilities=none))
    with pytest.raises(EdgecError, match="min_saving"):
        PassManager("sparse-weights{min_saving=1.5}", PassContext(capabilities=none))


def test_packed_weights_with_zeros_say_they_stay_packed():
    graph, _ = run_pipeline(
        "prune-magnitude{sparsity=0.8},quantize{scheme=weight-int4}", _small_cnn(), verify=False
    )
    _, stats = _legal(graph)
    rows = {row["node"]: row for row in stats["weights"]}
    assert (
        rows["conv_a"]["reason"]
        == "pack-weights stores it at 4 bits (no sparse format of packed weights yet)"
    )
    assert rows["conv_a"]["format"] == "dense" and rows["conv_a"]["sparsity"] >= 0.8
    assert stats["sparse"] == 0


def test_min_saving_keeps_a_weight_dense_that_saves_too_little(pruned_int8):
    capabilities = get_target("x86").capabilities()
    run = PassManager("group-qdq,sparse-weights{min_saving=0.9}", PassContext(capabilities=capabilities)).run(
        pruned_int8.copy()
    )
    rows = run.records[-1].stats["weights"]
    assert len(rows) == 5 and all(row["format"] == "dense" for row in rows)
    assert rows[0]["reason"].startswith("not 90% less than dense: bitmap takes")


def test_a_reader_without_a_sparse_kernel_is_refused_at_translation(pruned_int8):
    from edgec.targets.tvm.translate import translate

    legal, _ = _legal(pruned_int8)
    sparse = next(node for node in legal.nodes if node.op == SPARSE_OP)
    reader = sparse.outputs[0].outputs[0]
    reader.op, reader.domain = "Transpose", ""  # a hand-made legal graph: not a sparse reader
    with pytest.raises(UnsupportedNodeError, match="has no sparse kernel that reads it"):
        translate(legal)


def test_targets_declare_their_sparse_formats():
    assert get_target("x86").capabilities().sparse_formats == {"bitmap", "nm"}
    assert get_target("cortex-m4").capabilities().as_dict()["sparse_formats"] == ["bitmap", "nm"]
    off = dataclasses.replace(get_target("cortex-m4"), sparse_weights=False)
    assert off.capabilities().sparse_formats == frozenset() and off.describe()["sparse_weights"] is False
    assert "sparse-weights" in get_target("cortex-a53").capabilities().legalization


# --------------------------------------------------------------------------------------------
# the digits CNN end to end
# --------------------------------------------------------------------------------------------


def test_digits_compile_records_each_weight_and_dumps_the_legal_graph(cli, tmp_path: Path):
    from tests.test_cli import invoke

    out = tmp_path / "build"
    flags = ("--prune", "0.8", "--quantize", "int8", "--calib", DIGITS / "digits_calib.npz")
    result = invoke(
        cli, "compile", DIGITS / "digits_cnn.onnx", "-o", out, *flags, "--dump-after", "sparse-weights"
    )
    assert result.exit_code == 0, result.stderr
    assert "edgec.SparseWeight(" in result.stderr and "format='bitmap'" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    stats = _sparse_stats(manifest)
    assert {row["node"]: row["format"] for row in stats["weights"]} == {
        "conv1_out": "bitmap", "conv2_out": "bitmap", "conv3_out": "bitmap", "fc": "bitmap",
    }  # fmt: skip
    # 80 % zeros at int8: at least 10x smaller than the dense float32 weights.
    assert stats["dense_bytes"] * 4 / stats["stored_bytes"] >= 10
    precision = manifest["precision"]
    assert "sparse bitmap weight" in precision["conv2_out"]["kernel"]
    assert precision["conv2_out_weight_5_sparse"]["op"] == SPARSE_OP
    assert manifest["target"]["sparse_weights"] is True


@pytest.mark.slow
@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
def test_digits_on_cortex_m4_stores_int8_weights_60_percent_smaller_and_is_bit_exact(tmp_path: Path):
    """75 % unstructured + int8 on Cortex-M4 under qemu: the linked image holds the weight tensors
    at least 60 % smaller than the dense int8 build of the same model, and the outputs equal the
    numpy reference of the integer kernels."""
    from edgec.compile import legalize, prepare, target_of
    from edgec.config import CompileOptions
    from edgec.progress import Progress
    from edgec.run import run_build

    options = {"prune": 0.75, "quantize": "int8", "calib": DIGITS / "digits_calib.npz", "target": "cortex-m4"}
    builds = {}
    for sparse in (True, False):
        out = tmp_path / ("sparse" if sparse else "dense")
        builds[sparse] = edgec.compile(DIGITS / "digits_cnn.onnx", out, sparse_weights=sparse, **options)
    sparse, dense = (builds[s].manifest for s in (True, False))
    stats = _sparse_stats(sparse)
    assert stats["stored_bytes"] <= 0.4 * stats["dense_bytes"] and _sparse_stats(dense)["sparse"] == 0
    # The image's constants differ by what the sparse formats saved (up to the arrays' alignment).
    sections = [m["artifact"]["image_sections"][".weights"] for m in (sparse, dense)]
    assert abs((sections[1] - sections[0]) - (stats["dense_bytes"] - stats["stored_bytes"])) <= 16
    assert sparse["sizes"]["flash_bytes"] < dense["sizes"]["flash_bytes"]
    # RAM pays for the flash: the sparse kernels run their epilogue per row (no int32 accumulator
    # tensor, which would double the arena), but they walk output channels, not rows or pooled
    # pixels, so they neither write over their dying input nor fuse with their pool as the dense
    # SMLAD convs do (3,712 B against 2,432 B), and the manifest says so.
    assert sparse["sizes"]["arena_bytes"] <= 1.6 * dense["sizes"]["arena_bytes"]
    fusion = next(r["stats"] for r in sparse["legalization"] if r["name"] == "fuse-conv-pool")
    assert fusion["refused"] and all("stored sparse" in r["reason"] for r in fusion["refused"])
    config = CompileOptions(**{k: v for k, v in options.items()})
    legal = legalize(
        prepare(DIGITS / "digits_cnn.onnx", config, Progress(quiet=True)), target_of(config), Progress()
    )
    images = np.load(DIGITS / "digits_test.npz")["input"][:2]
    for index, image in enumerate(images):
        path = tmp_path / f"x{index}.npz"
        np.savez(path, input=image[None])
        got = run_build(tmp_path / "sparse", path)[0]["logits"]
        np.testing.assert_array_equal(got, run_reference(legal.graph, {"input": image[None]})["logits"])


def _sparse_stats(manifest: dict) -> dict:
    return next(r["stats"] for r in manifest["legalization"] if r["name"] == "sparse-weights")
