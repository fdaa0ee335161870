"""The static arena planner: greedy-by-size placement, liveness lower bound, in-place merging."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgec.targets.memory_plan import (
    Buffer,
    Overlap,
    liveness_lower_bound,
    naive_bytes,
    plan_greedy_by_size,
)


def _chain(sizes: list[int]) -> list[Buffer]:
    """A layer chain: tensor i is written at step i and read at step i + 1."""
    return [Buffer(f"t{i}", size, i, i + 1) for i, size in enumerate(sizes)]


def test_chain_reaches_the_lower_bound():
    buffers = _chain([4096, 8192, 2048, 8192, 1024])
    plan = plan_greedy_by_size(buffers, alignment=16)
    # Each step holds two neighbours; the largest pair is 4096 + 8192 at step 1.
    assert liveness_lower_bound(buffers, 16) == 12288
    assert plan.arena_bytes == 12288
    assert naive_bytes(buffers, 16) == 23552
    plan.check(buffers)


def test_random_lifetimes_never_overlap_and_stay_near_the_bound():
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(20):
        buffers = []
        for i in range(40):
            first = int(rng.integers(0, 30))
            buffers.append(
                Buffer(f"b{i}", int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 6)))
            )
        plan = plan_greedy_by_size(buffers, alignment=16)
        plan.check(buffers)  # raises if two live buffers share bytes
        bound = liveness_lower_bound(buffers, 16)
        assert bound <= plan.arena_bytes <= naive_bytes(buffers, 16)
        ratios.append(plan.arena_bytes / bound)
    # Greedy by size is a heuristic: on random interval graphs it stays within ~1.3x of the bound.
    assert max(ratios) < 1.35, ratios


def test_plan_is_deterministic_and_aligned():
    buffers = _chain([100, 30, 100, 30])
    first = plan_greedy_by_size(buffers, alignment=16)
    second = plan_greedy_by_size(list(reversed(buffers)), alignment=16)
    assert first.offsets == second.offsets
    assert all(offset % 16 == 0 for offset in first.offsets.values())


def test_in_place_merge_shares_the_input_buffer():
    # conv -> relu (element-wise, in place) -> conv
    buffers = [Buffer("conv_out", 4096, 0, 1), Buffer("relu_out", 4096, 1, 2), Buffer("out", 512, 2, 3)]
    overlap = Overlap("conv_out", "relu_out")
    plan = plan_greedy_by_size(buffers, 16, [overlap])
    assert plan.honoured == (overlap,) and plan.offsets["relu_out"] == plan.offsets["conv_out"]
    assert plan.arena_bytes == liveness_lower_bound(buffers, 16, [overlap]) == 4096 + 512
    assert liveness_lower_bound(buffers) == 8192


def test_an_overlap_is_honoured_only_where_its_offset_is_free():
    """y may be written over x, but z (live with y, placed first by size) sits where y would go:
    the plan keeps the two apart, and the check rejects an overlap it did not honour."""
    buffers = [Buffer("x", 64, 0, 1), Buffer("y", 64, 1, 2), Buffer("z", 256, 2, 3)]
    plan = plan_greedy_by_size(buffers, 16, [Overlap("x", "y")])
    assert plan.offsets["y"] != plan.offsets["x"] or not plan.honoured
    forged = dataclasses.replace(plan, offsets={**plan.offsets, "y": plan.offsets["x"]}, honoured=())
    with pytest.raises(AssertionError, match="live together but overlap"):
        forged.check(buffers)


def test_row_streaming_output_starts_a_margin_ahead_of_its_input():
    """expand -> depthwise written 208 B ahead of its dying input -> element-wise over that: a
    chain of overlaps needs the union of each pair, not the sum."""
    buffers = [Buffer("x", 1008, 0, 1), Buffer("dw", 1008, 1, 2), Buffer("act", 1008, 2, 3)]
    overlaps = [Overlap("x", "dw", 208), Overlap("dw", "act", 0)]
    plan = plan_greedy_by_size(buffers, 16, overlaps)
    assert plan.honoured == tuple(overlaps)
    assert plan.offsets == {"x": 208, "dw": 0, "act": 0}
    assert plan.arena_bytes == liveness_lower_bound(buffers, 16, overlaps) == 1216 < 2016


def test_a_block_where_size_order_is_not_enough_reaches_the_bound():
    """The MobileNet-style block of the Cortex tests: by size needs 7168 B, first-use order 6144 B."""
    buffers = [
        Buffer("a0", 3072, 0, 1),
        Buffer("a1", 2048, 1, 3),
        Buffer("a3", 2048, 3, 4),
        Buffer("a4", 4096, 4, 5),
        Buffer("a5", 64, 5, 6),
    ]
    plan = plan_greedy_by_size(buffers, alignment=16)
    assert plan.arena_bytes == liveness_lower_bound(buffers, 16) == 6144
