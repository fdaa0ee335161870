"""One source of truth for what a target runs as integers (issue 15, item 1).

The TVM targets declare their integer kernels (``Target.capabilities()``); the quantize pass reads
them through the pass context and keeps in float, with the target's reason, what the target would
not run as integers; the lowering reports per node what it built, and the manifest's precision is
that report. On every target family (x86, Cortex-A, Cortex-M, portable C) a keyword-spotting model
with a Conv1d front end and a self-attention step compiles with ``--quantize int8``: the Conv1d
layers and the hard-swish are int8, the MatMuls of two activations are float with the target's
reason. A model quantized without the target's capabilities, whose plan the target cannot honour,
fails with ``edgec: error:`` naming the node.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgec
from edgec.capabilities import Capabilities
from edgec.check import check_model
from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.ir import EdgeGraph, fix_input_shapes, infer_shapes
from edgec.pm import PassContext, get_pass
from edgec.precision import planned
from edgec.targets import get_target
from edgec.targets.base import BuiltNode
from tests.helpers import legalize, make_model, run_pipeline
from tests.targets.cortex_helpers import needs_tools
from tests.targets.kws_model import kws_model, write_kws
from tests.test_cli import assert_user_error, invoke

ATTENTION_REASON = (
    "MatMul of two activations has no integer kernel (its second operand is not a constant weight)"
)
CONV3D_REASON = "a 3-D convolution has no integer kernel (1-D and 2-D only)"


# ----- the declaration ----------------------------------------------------------------------------


# Targets whose budget is RAM plan memory under their board's budget, told which convolutions
# their schedules stream row by row.
_MEMORY = {
    "cortex-m4": ",fuse-conv-pool,plan-memory{budget=131072,streaming=all}",
    "cortex-m3": ",fuse-conv-pool,plan-memory{budget=65536,streaming=depthwise}",
    "cortex-m55": ",fuse-conv-pool,plan-memory{budget=1048576,streaming=all}",
    "c": ",fuse-conv-pool,plan-memory{budget=0,streaming=none}",
}
# Cortex-A pads input channels to its int8 micro-kernel's step (sadalp: 2, sdot: 4).
_PADDING = {"cortex-a53": ",pad-channels{multiple=2}", "cortex-a55": ",pad-channels{multiple=4}"}


@pytest.mark.parametrize(
    ("name", "bits", "kernel"),
    [("x86-64-v3", 256, "vpmaddwd"), ("cortex-a53", 128, "sadalp"), ("cortex-a55", 128, "sdot"),
     ("cortex-m4", 32, "smlad"), ("cortex-m3", 0, None), ("cortex-m55", 128, "vmladava"), ("c", 0, None)],
)  # fmt: skip
def test_tvm_targets_declare_their_kernels_and_legalization(name, bits, kernel):
    capabilities = get_target(name).capabilities()
    assert capabilities.vector_bits == bits and capabilities.int8_micro_kernel == kernel
    assert capabilities.packed_weight_bits == frozenset({1, 2, 4, 8, 16})
    assert {"Conv", "Gemm", "MatMul", "Add", "Mul", "AveragePool", "MaxPool", "Concat"} <= (
        capabilities.integer_kernels.ops
    )
    assert capabilities.sparse_formats == frozenset({"bitmap", "nm"})
    legal = "split-sum,eliminate-identity,group-qdq{rounding=single},pack-weights,sparse-weights"
    assert capabilities.legalization == legal + _PADDING.get(name, "") + _MEMORY.get(name, "")
    assert json.loads(json.dumps(capabilities.as_dict()))["legalization"] == capabilities.legalization


def test_integer_refusals_say_why():
    graph = EdgeGraph.from_onnx(_refused_ops_model())
    capabilities = get_target("x86").capabilities()
    reasons = {node.name: capabilities.integer_refusal(node, graph) for node in graph.nodes}
    assert reasons["conv3d"] == f"target 'x86': {CONV3D_REASON}"
    assert reasons["attn"] == f"target 'x86': {ATTENTION_REASON}"
    assert reasons["conv1d"] is None and reasons["hswish"] is None
    assert reasons["erf"] == "target 'x86' has no integer kernel for Erf"


def test_built_nodes_use_the_precision_vocabulary():
    with pytest.raises(ValueError, match="precision 'int4'"):
        BuiltNode("Conv", "int4")
    with pytest.raises(ValueError, match="weights 'int3'"):
        BuiltNode("Conv", "float32", weights="int3")


# ----- the quantize pass reads it ------------------------------------------------------------------


def _refused_ops_model() -> onnx.ModelProto:
    """A Conv3d, a Conv1d, a MatMul of two activations, a Mul and an Erf, each named."""
    rng = np.random.default_rng(3)
    node = helper.make_node
    nodes = [
        node("Conv", ["v", "w3"], ["c3"], name="conv3d"),
        node("Conv", ["x", "w1"], ["c1"], name="conv1d"),
        node("MatMul", ["c1", "xt"], ["s"], name="attn"),
        node("Mul", ["s", "s"], ["h"], name="hswish"),
        node("Erf", ["h"], ["y"], name="erf"),
    ]
    inits = {
        "w3": rng.standard_normal((2, 1, 3, 3, 3)).astype(np.float32),
        "w1": rng.standard_normal((4, 4, 3)).astype(np.float32),
    }
    F = TensorProto.FLOAT
    return make_model(
        nodes,
        {"v": (F, [1, 1, 4, 4, 4]), "x": (F, [1, 4, 6]), "xt": (F, [1, 4, 4])},
        {"c3": (F, [1, 2, 2, 2, 2]), "y": (F, [1, 4, 4])},
        inits,
    )


def test_quantize_keeps_in_float_what_the_target_would_not_run_as_integers():
    model = _refused_ops_model()
    feeds = {"v": (1, 1, 4, 4, 4), "x": (1, 4, 6), "xt": (1, 4, 4)}
    calibration = {
        k: np.random.default_rng(0).standard_normal((4, *s)).astype(np.float32) for k, s in feeds.items()
    }
    capabilities = get_target("cortex-m4").capabilities()
    graph, (record,) = run_pipeline(
        "quantize", model, verify=False, calibration=calibration, capabilities=capabilities
    )
    stats = record.stats
    assert stats["precision"]["conv1d"] == stats["precision"]["hswish"] == "int8"
    assert stats["precision"]["conv3d"] == stats["precision"]["attn"] == "float"
    reasons = {row["node"]: row["reason"] for row in stats["float_nodes"]}
    assert reasons["conv3d"] == f"target 'cortex-m4': {CONV3D_REASON}"
    assert reasons["attn"] == f"target 'cortex-m4': {ATTENTION_REASON}"
    assert planned(graph)["attn"] == "float"  # the decision travels with the graph
    # Without a target the scheme alone decides: both have an int8 form in the QDQ scheme.
    _, (free,) = run_pipeline("quantize", model, verify=False, calibration=calibration)
    assert free.stats["precision"]["attn"] == free.stats["precision"]["conv3d"] == "int8"


def test_weight_only_and_dynamic_schemes_ask_the_target():
    model = kws_model()
    narrow = Capabilities(target="tiny", integer_kernels=None, packed_weight_bits=frozenset({8}))
    with pytest.raises(EdgecError) as refused:
        run_pipeline("quantize{scheme=weight-int4}", model, verify=False, capabilities=narrow)
    assert "'conv1': \"target 'tiny' does not store 4-bit weights (it would keep float32)\"" in str(
        refused.value
    )
    assert "'attn': 'its weight is not a constant'" in str(refused.value)
    _, (record,) = run_pipeline("quantize{scheme=weight-int8}", model, verify=False, capabilities=narrow)
    weights = {name: value for name, value in record.stats["precision"].items() if value != "float"}
    assert weights == {"conv1": "weight-int8", "conv2": "weight-int8", "fc": "weight-int8"}
    with pytest.raises(EdgecError, match="target 'tiny' has no integer kernels"):
        run_pipeline("quantize{scheme=int8-dynamic}", model, verify=False, capabilities=narrow)


# ----- every target family: what the manifest says is what was built -----------------------------


def _compile_kws(target: str, tmp_path: Path) -> dict:
    model, calib = write_kws(tmp_path)
    result = edgec.compile(model, tmp_path / target, target=target, quantize="int8", calib=calib)
    assert result.ok
    return result.manifest


def _check_kws_manifest(manifest: dict, target: str) -> None:
    built = manifest["precision"]
    quantize = next(p for p in manifest["passes"] if p["name"] == "quantize")["stats"]
    for name, op in (
        ("conv1", "Conv"),
        ("conv2", "Conv"),
        ("hs_add", "Add"),
        ("hs_mul", "Mul"),
        ("fc", "Gemm"),
    ):
        assert quantize["precision"][name] == "int8"
        assert built[name]["op"] == op and built[name]["precision"] == "int8", (name, built[name])
    assert built["conv1"]["kernel"] == "integer conv2d" and built["hs_mul"]["kernel"] == "integer mul"
    for name in ("attn", "attn_ctx"):
        reason = f"target '{target}': {ATTENTION_REASON}"
        assert quantize["precision"][name] == "float"
        assert {"node": name, "op": "MatMul", "reason": reason} in quantize["float_nodes"]
        assert built[name] == {
            "op": "MatMul", "precision": "float32", "kernel": "relax frontend", "reason": reason,
        }  # fmt: skip
    assert "relu1" not in built  # folded into conv1's clamp
    legalization = {record["name"]: record for record in manifest["legalization"]}
    memory = ["fuse-conv-pool", "plan-memory"] if target in _MEMORY else []
    padding = ["pad-channels"] if target in _PADDING else []
    expected = [
        "split-sum", "eliminate-identity", "group-qdq", "pack-weights", "sparse-weights", *padding, *memory
    ]  # fmt: skip
    assert list(legalization) == expected
    assert legalization["group-qdq"]["stats"]["integer_nodes"]["IntegerConv"] == 2
    assert legalization["sparse-weights"]["stats"]["sparse"] == 0  # not pruned: every weight stays dense
    # int8 from input to classifier, float only around the attention: within a few output steps
    # of onnxruntime running the QDQ graph.
    error = manifest["error"]
    assert abs(error["artifact_vs_original"]["max_abs"] - error["optimized_vs_original"]["max_abs"]) < 0.05
    assert error["artifact_vs_original"]["cosine"] > 0.999


def test_kws_on_x86(tmp_path):
    _check_kws_manifest(_compile_kws("x86", tmp_path), "x86")


def test_kws_on_portable_c(tmp_path):
    _check_kws_manifest(_compile_kws("c", tmp_path), "c")


@needs_tools("aarch64-linux-gnu-gcc", "qemu-aarch64-static")
def test_kws_on_cortex_a53(tmp_path):
    _check_kws_manifest(_compile_kws("cortex-a53", tmp_path), "cortex-a53")


@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
def test_kws_on_cortex_m4(tmp_path):
    manifest = _compile_kws("cortex-m4", tmp_path)
    _check_kws_manifest(manifest, "cortex-m4")
    assert manifest["capabilities"]["int8_micro_kernel"] == "smlad"


# ----- a plan the target cannot honour ------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_qdq(tmp_path_factory) -> Path:
    """The KWS model quantized with no target in view: the MatMuls of two activations are int8
    in its recorded plan, which no TVM target can build."""
    folder = tmp_path_factory.mktemp("foreign")
    model, calib = write_kws(folder)
    graph = EdgeGraph.from_onnx(onnx.load(str(model)))
    fix_input_shapes(graph, None)
    infer_shapes(graph)
    samples = dict(np.load(calib))
    quantize = get_pass("quantize")()
    quantized = quantize.run(graph, PassContext(calibration=samples)).graph
    assert planned(quantized)["attn"] == "int8"
    path = folder / "kws_int8_anywhere.onnx"
    onnx.save(quantized.to_onnx(), str(path))
    return path


def test_compiling_a_plan_the_target_cannot_honour_fails_naming_the_node(foreign_qdq, tmp_path, cli):
    result = invoke(cli, "compile", foreign_qdq, "-o", tmp_path / "out", "--target", "x86")
    assert_user_error(
        result,
        "edgec: error: MatMul 'attn': it was quantized as int8, but x86 cannot run it as integers: "
        + ATTENTION_REASON,
        "fix: --target x86",
    )
    assert not (tmp_path / "out").exists()


def test_check_collects_the_refusal_with_its_fix(foreign_qdq):
    graph = EdgeGraph.from_onnx(onnx.load(str(foreign_qdq)))
    report = check_model(graph, "cortex-m4")
    problems = {problem.node: problem for problem in report.problems}
    assert set(problems) == {"attn", "attn_ctx"}
    assert problems["attn"].fix.flag == "--target" and problems["attn"].fix.value == "cortex-m4"
    with pytest.raises(UnsupportedNodeError, match="MatMul 'attn': it was quantized as int8"):
        legalize(graph, "cortex-m4")
