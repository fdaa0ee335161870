"""Conv register tiles are a power-of-two number of whole vectors when the channel count allows:
LLVM scalarises tiles of 1.5, 2.5 or 3 vectors, which made 48- or 80-channel layers (channel
pruning at a multiple of the vector width) ~50x slower than 64-channel ones."""

from __future__ import annotations

import pytest

from edgec.targets.tvm.schedules import Conv2dNHWC, CpuVectorInfo

AVX512 = CpuVectorInfo(lanes=16, registers=32, max_accumulators=24)
AVX2 = CpuVectorInfo(lanes=8, registers=16, max_accumulators=13)


@pytest.mark.parametrize("info", [AVX512, AVX2], ids=["avx512", "avx2"])
@pytest.mark.parametrize("channels", [48, 80, 96, 112, 176, 208])
@pytest.mark.parametrize("width", [7, 14, 28, 55, 56, 112])
def test_channel_tiles_are_a_power_of_two_of_whole_vectors(info, channels, width):
    wi, oci = Conv2dNHWC(info).pick_tiles(width, channels)
    vectors, rest = divmod(oci, info.lanes)
    assert rest == 0 and vectors & (vectors - 1) == 0, (wi, oci)
    assert width % wi == 0 and channels % oci == 0


def test_channel_counts_that_are_not_whole_vectors_keep_a_dividing_tile():
    wi, oci = Conv2dNHWC(AVX512).pick_tiles(13, 1000)
    assert 1000 % oci == 0 and 13 % wi == 0
