"""``pad-channels`` (``edgec.targets.legalize.pad_channels``): integer convolutions whose input
channels are off the micro-kernel's step get zero weight channels; the sums stay exactly the same,
and only targets with such a micro-kernel (and RAM not the budget) name the pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager
from edgec.targets import get_target
from edgec.targets.integer.reference import run_reference
from edgec.targets.tvm.target import REDUCTION_STEP, legalization
from tests.helpers import covers, legalize, rng
from tests.targets.cortex_helpers import build, int8_qdq, mobilenet_block_model, needs_tools


def _legal(model: onnx.ModelProto | EdgeGraph, multiple: int = 0) -> tuple[EdgeGraph, dict]:
    """The legal graph with ``pad-channels{multiple}`` (none when 0) and that pass's stats."""
    graph = model.copy() if isinstance(model, EdgeGraph) else EdgeGraph.from_onnx(model)
    run = PassManager(legalization("single", channel_multiple=multiple), PassContext()).run(graph)
    stats = next((r.stats for r in run.records if r.name == "pad-channels"), {})
    return run.graph, stats


def _convs(graph: EdgeGraph) -> dict[str, tuple[list[int], int]]:
    """IntegerConv name -> (weight shape, channel_pad)."""
    return {
        node.name: ([int(d) for d in node.inputs[1].shape], int(node.attrs.get("channel_pad", 0)))
        for node in graph.nodes
        if node.op == "IntegerConv"
    }


@covers("pad-channels", kind="structural")
def test_first_layer_gets_zero_weight_channels(mixed_qdq) -> None:
    plain, _ = _legal(mixed_qdq)
    padded, stats = _legal(mixed_qdq, 4)
    before, after = _convs(plain), _convs(padded)
    # 3 -> 8 and 6 -> 8 padded to 4 and 8 input channels; 8 -> 12 and 12 -> 6 already fit.
    assert {name: shape[1] for name, (shape, _) in after.items()} == {
        name: -(-shape[1] // 4) * 4 for name, (shape, _) in before.items()
    }
    assert sorted(pad for _, pad in after.values()) == [0, 0, 1, 2]
    assert stats["padded"] == 2
    for name, (shape, pad) in after.items():
        weight = next(n for n in padded.nodes if n.name == name).inputs[1].values
        assert not np.any(weight[:, shape[1] - pad :]), name  # the added channels are zero
    assert "channel_pad=1" in padded.text()


@covers("pad-channels", kind="numeric")
def test_padded_convolutions_compute_the_same_sums(mixed_qdq) -> None:
    plain, _ = _legal(mixed_qdq)
    padded, _ = _legal(mixed_qdq, 4)
    for seed in range(3):
        x = (rng(seed).standard_normal((1, 3, 7, 7)) * 4).astype(np.float32)
        np.testing.assert_array_equal(
            run_reference(padded, {"x": x})["y"], run_reference(plain, {"x": x})["y"]
        )


@needs_tools("aarch64-linux-gnu-gcc", "qemu-aarch64-static")
def test_padded_first_layer_runs_bit_exact_under_qemu(tmp_path: Path) -> None:
    """The padded input of a real first layer (3x3 stride 2, with spatial padding and ReLU6)."""
    model = int8_qdq(mobilenet_block_model())
    legal = legalize(model, "cortex-a55")
    assert 1 in {pad for _, pad in _convs(legal).values()}
    _, manifest = build("cortex-a55", model, tmp_path / "a55", "m")
    x = (rng(9).standard_normal((1, 3, 16, 16)) * 3).astype(np.float32)
    got = get_target("cortex-a55").run(tmp_path / "a55", manifest, [x])[0][0]
    name = manifest["outputs"][0]["name"]
    np.testing.assert_array_equal(got.reshape(-1), run_reference(legal, {"x": x})[name].reshape(-1))


@covers("pad-channels", kind="negative")
def test_grouped_and_fitting_convolutions_are_left_alone(mixed_qdq) -> None:
    # The depthwise conv of the MobileNet block is grouped: refused with the reason.
    _, stats = _legal(int8_qdq(mobilenet_block_model()), 4)
    reasons = {row["reason"] for row in stats.get("refused", [])}
    assert any("grouped or depthwise" in reason for reason in reasons), stats
    # Input channels already a multiple of the step: nothing to do.
    padded, stats = _legal(mixed_qdq, 2)
    assert stats["padded"] == 1 and sum(pad for _, pad in _convs(padded).values()) == 1
    # A second run leaves the padded graph as it is.
    again, stats = _legal(padded, 2)
    assert stats["padded"] == 0 and _convs(again) == _convs(padded)
    with pytest.raises(EdgecError, match="at least 2"):
        PassManager("pad-channels{multiple=1}")


def test_only_targets_with_a_stepped_micro_kernel_and_ram_to_spare_pad() -> None:
    for name, multiple in (("cortex-a55", 4), ("cortex-a76", 4), ("cortex-a53", 2), ("cortex-a72", 2)):
        assert f"pad-channels{{multiple={multiple}}}" in get_target(name).capabilities().legalization
    off = dataclasses.replace(get_target("cortex-a55"), micro_kernels=False)
    targets = ("x86-64-v3", "cortex-m4", "cortex-m3", "c")  # not measured on x86; RAM-bound; none
    for target in (off, *(get_target(name) for name in targets)):
        assert "pad-channels" not in target.capabilities().legalization, target.name


def test_reduction_steps_are_the_rules_groups() -> None:
    pytest.importorskip("tvm")
    from edgec.targets.tvm.arm_neon import Int8NeonConv

    rules = [Int8NeonConv("sdot"), Int8NeonConv("sadalp")]
    assert {rule.instruction: rule.group for rule in rules} == REDUCTION_STEP
