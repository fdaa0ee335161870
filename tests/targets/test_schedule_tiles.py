"""Conv register tiles are whole native vectors when the channel count allows: LLVM scalarised a
tile vectorised as one 48- or 80-lane vector, which made 48- or 80-channel layers (channel pruning
at a multiple of the vector width) ~50x slower than 64-channel ones; the schedule splits the tile
into vectors of :meth:`Conv2dNHWC.vector_width` lanes, so 3 or 5 of them are fine."""

from __future__ import annotations

import pytest

from edgec.targets.tvm.schedules import Conv2dNHWC, CpuVectorInfo

AVX512 = CpuVectorInfo(lanes=16, registers=32, max_accumulators=24)
AVX2 = CpuVectorInfo(lanes=8, registers=16, max_accumulators=13)


@pytest.mark.parametrize("info", [AVX512, AVX2], ids=["avx512", "avx2"])
@pytest.mark.parametrize("channels", [48, 80, 96, 112, 176, 208])
@pytest.mark.parametrize("width", [7, 14, 28, 55, 56, 112])
def test_channel_tiles_are_whole_native_vectors(info, channels, width):
    rule = Conv2dNHWC(info)
    wi, oci = rule.pick_tiles(width, channels)
    assert rule.vector_width(channels) == info.lanes  # every count here is a multiple of the lanes
    assert oci % info.lanes == 0, (wi, oci)
    assert width % wi == 0 and channels % oci == 0


def test_channel_counts_that_are_not_whole_vectors_keep_a_dividing_tile():
    wi, oci = Conv2dNHWC(AVX512).pick_tiles(13, 1000)
    assert 1000 % oci == 0 and 13 % wi == 0
