"""Microcontroller memory (issue 19): conv + pool fusion, row bands of the first stages, the planner
that chooses them under a RAM budget, and the build that keeps them bit-exact.

The model is small but has every case: a stem conv, a depthwise conv and a 1x1 conv read by a
max pool (fusable), a conv read by an average pool (fusable), a 3x3 stride-2 max pool (its windows
overlap: refused), a classifier. It is quantized once per module by edgec itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgec
from edgec.ir import EdgeGraph, infer_shapes, op_sequence
from edgec.targets import get_target
from edgec.targets.integer.reference import run_reference
from edgec.targets.legalize.memory_model import estimate_arena, layer_at_a_time_bytes
from edgec.verify import random_inputs
from tests.helpers import covers, make_model, run_pipeline
from tests.targets.cortex_helpers import manifest_of, needs_tools

pytest.importorskip("tvm")

LEGAL = "split-sum,eliminate-identity,group-qdq,pack-weights"


def stage_model(overlapping_pool: bool = False) -> onnx.ModelProto:
    """1x3x16x16 → conv 3x3 (3→8) → depthwise 3x3 → conv 1x1 (8→8) → MaxPool 2 → conv 3x3 (8→8)
    → AveragePool 2 → Flatten → Gemm (10); ReLUs after the convs, seeded weights. With
    ``overlapping_pool`` the first pool is 3x3 stride 2 pad 1."""
    rng = np.random.default_rng(3)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]} if overlapping_pool else {
        "kernel_shape": [2, 2], "strides": [2, 2]}  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], name="dw", kernel_shape=[3, 3], pads=[1] * 4, group=8
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("MaxPool", ["r3"], ["p1"], name="maxpool", **pool),
        helper.make_node("Conv", ["p1", "w4", "b4"], ["c4"], name="conv4", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("AveragePool", ["r4"], ["p2"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w5", "b5"], ["y"], name="fc", transB=1),
    ]
    init = {
        "w1": weight(8, 3, 3, 3), "b1": np.full(8, 0.05, np.float32), "w2": weight(8, 1, 3, 3),
        "b2": np.full(8, 0.05, np.float32), "w3": weight(8, 8, 1, 1), "b3": np.full(8, 0.05, np.float32),
        "w4": weight(8, 8, 3, 3), "b4": np.full(8, 0.05, np.float32), "w5": weight(10, 8 * 4 * 4),
        "b5": np.zeros(10, np.float32),
    }  # fmt: skip
    return make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, 3, 16, 16])},
        {"y": (TensorProto.FLOAT, [1, 10])},
        init,
        name="stages",
    )


def quantize(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    source, calib, out = folder / "model.onnx", folder / "calib.npz", folder / "model_int8.onnx"
    onnx.save(model, str(source))
    np.savez(calib, x=np.random.default_rng(1).random((8, 3, 16, 16)).astype(np.float32))
    edgec.optimize(source, out, pipeline="default,quantize", calib=calib)
    return onnx.load(str(out))


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> onnx.ModelProto:
    return quantize(stage_model(), tmp_path_factory.mktemp("stages"))


@pytest.fixture(scope="module")
def fused(stages) -> EdgeGraph:
    graph, _ = run_pipeline(f"{LEGAL},fuse-conv-pool", stages, verify=False)
    infer_shapes(graph)
    return graph


def _node(graph: EdgeGraph, name: str):
    return next(node for node in graph.nodes if node.name == name)


# ----- fuse-conv-pool ------------------------------------------------------------------------------


@covers("fuse-conv-pool", kind="structural")
def test_conv_and_the_pool_that_reads_it_become_one_node(stages):
    graph, records = run_pipeline(f"{LEGAL},fuse-conv-pool", stages, verify=False)
    ops = op_sequence(graph)
    assert "IntegerConvMaxPool" in ops and "IntegerConvAveragePool" in ops
    assert "MaxPool" not in ops and "IntegerAveragePool" not in ops
    text = graph.text()
    fused = re.search(r"= edgec\.IntegerConvMaxPool\(.*\) \{(.*)\}  # pw\n", text)
    assert fused is not None, text
    assert "pool_kernel_shape=[2,2]" in fused.group(1) and "pool_node='maxpool'" in fused.group(1)
    assert records[-1].stats["nodes"] == [
        {"conv": "pw", "pool": "maxpool", "kind": "IntegerConvMaxPool"},
        {"conv": "conv4", "pool": "avgpool", "kind": "IntegerConvAveragePool"},
    ]


@covers("fuse-conv-pool", kind="numeric")
def test_fused_nodes_compute_the_unfused_pair_bit_for_bit(stages):
    _, records = run_pipeline(f"{LEGAL},fuse-conv-pool", stages, verify=True)
    assert records[-1].stats["fused"] == 2 and records[-1].stats["max_abs_difference"] == 0
    # TVM's build of the fused graph (one kernel per fused node) against the numpy reference.
    import tvm
    from tvm import relax

    from edgec.targets.tvm.translate import translate

    graph, _ = run_pipeline(f"{LEGAL},fuse-conv-pool", stages, verify=False)
    vm = relax.VirtualMachine(tvm.compile(translate(graph), "llvm"), tvm.cpu())
    for seed in range(3):
        x = random_inputs(graph, seed=seed)["x"] * 3  # 3x the range: the clamps bite
        got = vm["main"](tvm.runtime.tensor(x))
        np.testing.assert_array_equal(got.numpy(), run_reference(graph, {"x": x})["y"])


@covers("fuse-conv-pool", kind="negative")
def test_overlapping_pool_windows_are_refused_with_the_reason(tmp_path):
    model = quantize(stage_model(overlapping_pool=True), tmp_path)
    graph, records = run_pipeline(f"{LEGAL},fuse-conv-pool", model, verify=False)
    assert op_sequence(graph).count("MaxPool") == 1  # left alone
    (refusal,) = records[-1].stats["refused"]
    assert refusal["rule"] == "conv+max-pool" and "windows that do not tile the input" in refusal["reason"]
    assert records[-1].stats["nodes"] == [
        {"conv": "conv4", "pool": "avgpool", "kind": "IntegerConvAveragePool"}
    ]


@covers("fuse-conv-pool", kind="negative")
def test_a_conv_reading_a_sparse_weight_keeps_its_pool(tmp_path):
    """sparse-weights runs first (a pruned model keeps the flash it saved); the sparse kernel walks
    output channels, not pooled pixels, so that conv and its pool stay apart, with the reason."""
    model = stage_model()
    w3 = next(init for init in model.graph.initializer if init.name == "w3")
    values = onnx.numpy_helper.to_array(w3).copy()
    values[np.abs(values) < np.quantile(np.abs(values), 0.8)] = 0
    w3.CopyFrom(onnx.numpy_helper.from_array(values, "w3"))
    capabilities = get_target("cortex-m4").capabilities()
    pipeline = f"{LEGAL},sparse-weights,fuse-conv-pool"
    graph, records = run_pipeline(
        pipeline, quantize(model, tmp_path), verify=False, capabilities=capabilities
    )
    assert records[-2].stats["sparse"] == 1 and op_sequence(graph).count("MaxPool") == 1
    (refusal,) = records[-1].stats["refused"]
    assert refusal["rule"] == "conv+max-pool" and "reads its weight stored sparse" in refusal["reason"]
    assert [n["pool"] for n in records[-1].stats["nodes"]] == ["avgpool"]
    assert estimate_arena(graph, "all").peak_bytes >= 2 * 8 * 16 * 16  # pw does not stream in place


# ----- patch-stages ----------------------------------------------------------------------------------


def _until(graph: EdgeGraph) -> str:
    return _node(graph, "pw").outputs[0].name  # the fused conv + max pool: 8x8 rows


@covers("patch-stages", kind="structural")
def test_a_stage_runs_in_row_bands_with_padding_only_at_the_borders(fused):
    until = _until(fused)
    graph, records = run_pipeline(f"patch-stages{{until={until},bands=2}}", fused.to_onnx(), verify=False)
    ops = op_sequence(graph)
    assert ops.count("Slice") == 2 and ops.count("Concat") == 1
    for name in ("stem", "dw", "pw"):
        assert {n.attrs["patch_of"] for n in graph.nodes if n.name.startswith(f"{name}__band")} == {name}
    stem0, stem1 = _node(graph, "stem__band0"), _node(graph, "stem__band1")
    # Band 0 pads the top, band 1 the bottom; the rows between are the halo (real data).
    assert list(stem0.attrs["pads"]) == [1, 1, 0, 1] and list(stem1.attrs["pads"]) == [0, 1, 1, 1]
    stats = records[-1].stats
    assert stats["rows"] == [[0, 4], [4, 8]] and stats["extra_macs"] > 0


@covers("patch-stages", kind="numeric")
def test_row_bands_are_bit_exact_and_count_their_extra_macs(fused):
    until = _until(fused)
    _, records = run_pipeline(f"patch-stages{{until={until},bands=4}}", fused.to_onnx(), verify=True)
    stats = records[-1].stats
    assert stats["max_abs_difference"] == 0
    # Pooled rows 0-2, 2-4, 4-6, 6-8: the fused 1x1 conv + pool and the depthwise conv compute
    # exactly their 4 rows of 16 per band; the depthwise conv's 3x3 window needs a halo row of the
    # stem's output at each inner border: the stem computes 5 + 6 + 6 + 5 = 22 of its 16 rows,
    # 6 extra rows of 16 x 8 outputs at 3 x 3 x 3 MACs each.
    assert stats["extra_macs"] == (22 - 16) * 16 * 8 * 27


@covers("patch-stages", kind="negative")
def test_stages_that_cannot_run_in_bands_are_left_alone(fused):
    model = fused.to_onnx()
    flat = _node(fused, "flatten").outputs[0].name
    graph, records = run_pipeline(f"patch-stages{{until={flat},bands=2}}", model, verify=False)
    assert "is not [1, C, H, W]" in records[-1].stats["refused"] and "Concat" not in op_sequence(graph)
    _, records = run_pipeline(f"patch-stages{{until={_until(fused)},bands=9}}", model, verify=False)
    assert records[-1].stats["refused"] == f"9 bands of the 8 rows of '{_until(fused)}': between 2 and 8"
    _, records = run_pipeline("patch-stages", model, verify=False)
    assert records[-1].stats["refused"] == "no stage given (until=<tensor>)"


# ----- plan-memory -------------------------------------------------------------------------------------


@covers("plan-memory", kind="structural")
def test_the_budget_decides_whether_and_how_far_to_patch(fused):
    model = fused.to_onnx()
    roomy, records = run_pipeline("plan-memory{budget=1000000}", model, verify=False)
    assert "Concat" not in op_sequence(roomy) and records[-1].stats["chosen"]["until"] is None
    assert records[-1].stats["why"].startswith("unpatched, the graph fits the budget")
    unpatched = records[-1].stats["chosen"]["estimated_peak_bytes"]
    tight, records = run_pipeline(f"plan-memory{{budget={unpatched + 4096 - 1}}}", model, verify=False)
    stats = records[-1].stats
    assert stats["chosen"]["until"] is not None and stats["chosen"]["estimated_peak_bytes"] < unpatched
    assert stats["why"].startswith("the fewest recomputed MACs that fit")
    assert "Concat" in op_sequence(tight) and len(stats["candidates"]) > 2
    # The cheapest of the candidates that fit: none that fits recomputes less.
    fits = [c for c in stats["candidates"] if c["estimated_peak_bytes"] + 4096 <= unpatched + 4095]
    assert stats["chosen"]["extra_macs"] == min(c["extra_macs"] for c in fits)


@needs_tools("arm-none-eabi-gcc")
@covers("plan-memory", kind="numeric")
def test_the_estimate_predicts_the_built_arena(fused, tmp_path):
    """The planner's estimate against the arena the Cortex-M4 build really has (the estimate
    leaves the kernels' small workspaces out: within 25 %), and the chosen graph stays exact."""
    streaming = get_target("cortex-m4").row_streaming()
    graph, records = run_pipeline(f"plan-memory{{streaming={streaming}}}", fused.to_onnx(), verify=True)
    plan = records[-1].stats  # no budget: the smallest peak
    assert plan["chosen"]["until"] is not None and [r.name for r in records] == ["plan-memory"]
    target = get_target("cortex-m4")
    artifact = target.build(target.lower(graph).module, tmp_path, "stages")
    estimate = plan["chosen"]["estimated_peak_bytes"]
    assert estimate <= artifact.sizes["arena_bytes"] <= 1.25 * estimate
    feeds = random_inputs(graph, seed=5)
    assert run_reference(graph, feeds)["y"].tobytes() == run_reference(fused, feeds)["y"].tobytes()


@covers("plan-memory", kind="negative")
def test_no_plan_fits_or_none_may_recompute(fused):
    model = fused.to_onnx()
    graph, records = run_pipeline("plan-memory{budget=64}", model, verify=False)
    stats = records[-1].stats
    assert stats["why"].startswith("no plan fits the budget of 64 B")
    # The smallest peak among the plans that recompute at most 15 % of the MACs (the default).
    allowed = [c for c in stats["candidates"] if c["extra_macs_share"] <= 0.15]
    assert len(allowed) < len(stats["candidates"])
    assert stats["chosen"]["estimated_peak_bytes"] == min(c["estimated_peak_bytes"] for c in allowed)
    graph, records = run_pipeline("plan-memory{budget=64,max_recompute=0}", model, verify=False)
    assert records[-1].stats["chosen"]["until"] is None and "Concat" not in op_sequence(graph)


def test_layer_at_a_time_is_the_largest_layer_input_plus_output(stages):
    graph, _ = run_pipeline(LEGAL, stages, verify=False)
    infer_shapes(graph)
    # The quantize reads 3x16x16 float32 and writes 768 B; the depthwise and 1x1 convs read and
    # write 8x16x16 int8 (2048 B) each: 4096 B, the largest; the pools work in place.
    assert layer_at_a_time_bytes(graph) == 2 * 8 * 16 * 16
    assert estimate_arena(graph).peak_bytes == layer_at_a_time_bytes(graph)  # nothing in place
    # Streaming rows, the depthwise conv writes 3 rows (384 B) ahead of its dying input and the 1x1
    # conv one row (128 B) ahead: the stem (768 B in, 2048 B out, 3 input channels) is the peak.
    assert estimate_arena(graph, "depthwise").peak_bytes == 2048 + 2048  # the 1x1 conv does not
    assert estimate_arena(graph, "all").peak_bytes == 768 + 2048


# ----- the build ----------------------------------------------------------------------------------------


def _build_and_compare(target_name: str, stages: onnx.ModelProto, folder: Path) -> dict:
    """Builds the model for the target with and without memory planning, runs both on the same
    input and checks that their outputs are the same bytes; returns the planned build's sizes,
    details and legalization stats, and the unplanned arena."""
    import dataclasses

    graph = EdgeGraph.from_onnx(stages)
    x = np.abs(random_inputs(graph, seed=2)["x"])
    results = {}
    for planned in (True, False):
        target = dataclasses.replace(get_target(target_name), memory_planning=planned)
        out = folder / ("planned" if planned else "today")
        out.mkdir(parents=True)
        legalized = target.legalize(graph.copy())
        artifact = target.build(target.lower(legalized.graph).module, out, "stages")
        results[planned] = (artifact, legalized, target.run(out, manifest_of(graph), [x[None]])[0][0][0])
    (artifact, legalized, got), (today, _, want) = results[True], results[False]
    assert got.tobytes() == want.tobytes()
    # The int8 logits before the float dequantize: the numpy reference's, exactly.
    logits = run_reference(legalized.graph, {"x": x}, keep_all=True)
    dequantize = next(node for node in legalized.graph.nodes if node.op == "IntegerDequantize")
    scale, zero = float(dequantize.attrs["scale"]), int(dequantize.attrs["zero_point"])
    q = logits[dequantize.inputs[0].name].astype(np.int32)
    np.testing.assert_allclose(got, (q - zero) * np.float32(scale), rtol=1e-6, atol=0)
    return {
        **artifact.sizes,
        **artifact.details,
        "today_arena_bytes": today.sizes["arena_bytes"],
        "records": {r.name: r.stats for r in legalized.records},
    }


@needs_tools("gcc")
def test_portable_c_build_is_bit_exact_with_fusion_bands_and_in_place(stages, tmp_path):
    built = _build_and_compare("c", stages, tmp_path)
    memory = built["memory"]
    chosen = built["records"]["plan-memory"]["chosen"]
    assert chosen["until"] is not None  # no budget: the smallest peak
    # The two fused kernels, the one in the bands once per band shape.
    assert len(memory["fused_kernels"]) >= 2
    assert any("concatenation" in step["kind"] for step in memory["in_place"])
    peak = memory["peak"]
    assert peak["live_bytes"] == max(step["live_bytes"] for step in memory["steps"])
    assert built["arena_bytes"] >= peak["live_bytes"]
    # Portable C's loops hold no whole intermediate (PerElement): the arena is what the planner
    # estimated, a fraction of the unplanned build's.
    assert built["arena_bytes"] <= 1.25 * chosen["estimated_peak_bytes"]
    assert 4 * built["arena_bytes"] < built["today_arena_bytes"]


@pytest.mark.slow
@needs_tools("arm-none-eabi-gcc", "qemu-system-arm")
def test_cortex_m4_build_is_bit_exact_and_streams_rows_in_place(stages, tmp_path):
    built = _build_and_compare("cortex-m4", stages, tmp_path)
    kinds = [step["kind"] for step in built["memory"]["in_place"]]
    assert any(kind.startswith("rows written over the dying input") for kind in kinds)
    assert built["arena_bytes"] < built["today_arena_bytes"]


@needs_tools("gcc")
def test_manifest_records_memory_and_inspect_prints_the_timeline(stages, tmp_path, cli):
    import json

    from tests.test_cli import assert_user_error, invoke

    model = tmp_path / "stages_int8.onnx"
    onnx.save(stages, str(model))
    build = tmp_path / "build"
    result = invoke(cli, "compile", model, "--target", "c", "-p", "", "--no-simplify", "-o", build, "-q")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((build / "manifest.json").read_text())
    memory = manifest["memory"]
    assert {f["pool"] for f in memory["fusions"]} == {"maxpool", "avgpool"}
    assert memory["patches"]["until"] and memory["patches"]["why"] == "no RAM budget: the smallest peak"
    assert memory["peak"]["live"] and all(b["tensors"] for b in memory["peak"]["live"])
    assert "memory" not in manifest["artifact"]  # one home: the manifest's memory section
    assert manifest["target"]["memory_planning"] is True
    assert "plan-memory{budget=0,streaming=none}" in manifest["capabilities"]["legalization"]
    text = invoke(cli, "inspect", "--memory", build).output
    assert f"peak at step {memory['peak']['step']}" in text and "fused: pw + maxpool" in text
    assert f"row bands: {memory['patches']['bands']} bands up to '{memory['patches']['until']}'" in text
    assert json.loads(invoke(cli, "inspect", "--memory", build, "--json").output) == memory
    del manifest["memory"]
    (build / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(invoke(cli, "inspect", "--memory", build), "this build has no memory report")
    assert_user_error(invoke(cli, "inspect", "--memory", tmp_path), "is not an edgec build directory")
