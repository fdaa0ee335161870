"""Register-tiled CPU schedules of the reductions that dominate a CNN: the NHWC/HWIO conv2d
(:class:`Conv2dNHWC`), the depthwise conv2d (:class:`DepthwiseConv2dNHWC`; with its padding
merged in, memory-first: :class:`DepthwiseConvRows`) and ``x @ W`` (:class:`Matmul`), each with its
elementwise epilogue fused in.
"""

from __future__ import annotations

import math

from tvm import s_tir

from .schedule_common import (
    COMM_REDUCE,
    DATA_PAR,
    MIN_PARALLEL_MACS,
    CpuRule,
    extent,
    gather_input_copies,
    is_spatial,
    iter_types,
    root_blocks,
    row_window,
    vectorize_tail,
    with_row_window,
)

__all__ = ["Conv2dNHWC", "DepthwiseConv2dNHWC", "DepthwiseConvRows", "GroupedConv2dNHWC", "Matmul"]

# Input channels per step of a blocked conv reduction, and the channel tile's weight bytes above
# which the reduction is blocked (measured on ResNet-50's layers, AVX-512: 1x1 convs whose tile
# holds 32 KB of weights ran slower blocked, 3x3 ones of 300 KB and more 15-35 % faster).
REDUCTION_CHUNK = 32
BLOCKED_WEIGHT_BYTES = 64 * 1024


class Conv2dNHWC(CpuRule):
    """Register-tiled NHWC/HWIO conv2d with its elementwise epilogue fused in."""

    # The name Relax's legalization gives the conv block this rule tiles.
    block_name = "conv2d_nhwc"

    def tile_channels(self, sch: s_tir.Schedule, conv: s_tir.SBlockRV, out_channels: int) -> int | None:
        """The output channels a channel tile must divide (all of them); ``None`` declines."""
        return out_channels

    def pick_tiles(self, width: int, out_channels: int) -> tuple[int, int]:
        """The (output columns, output channels) register tile for a conv layer.

        The accumulators, one register per weight vector and one for the broadcast input must fit
        in the register file, and the tile must divide the layer exactly (no tail loops: a tail
        would stop LLVM from keeping the accumulators in registers). Channel tiles are whole
        vectors of :meth:`vector_width` lanes. Among those, enough accumulators to hide the FMA
        latency (12) first, then the fewest loads per FMA, where a weight vector (streamed from
        L2 by every column tile) costs twice a broadcast input (in L1): 1/columns weighs twice
        1/vectors. On 14-wide ResNet layers 7 x 32 ran twice as fast as 2 x 128 (16
        accumulators, but each weight vector used twice). W=13 with 1000 classes gives 13 x 8
        rather than 1 x 40.

        Args:
            width: Output width (W).
            out_channels: Output channels (CO).

        Returns:
            ``(wi, oci)``: columns and channels per tile.
        """
        lanes, regs = self.vector_width(out_channels), self.info.registers
        # Channel tiles: up to 8 vectors (1000 classes with AVX-512 -> 8-lane vectors, 40, 200
        # ...). A tile must divide CO: a tail would put a predicate inside the unrolled tile.
        candidates = [c for c in range(lanes, 8 * self.info.lanes + 1, lanes) if out_channels % c == 0]
        best: tuple[tuple[int, float, int], int, int] | None = None
        for oc in candidates:
            vecs = oc // lanes
            budget = min(self.info.max_accumulators, regs - vecs - 1)
            for wi in range(1, min(width, 16) + 1):
                if width % wi or wi * vecs > budget:
                    continue
                loads_per_fma = 2 / wi + 1 / vecs
                key = (min(wi * vecs, 12), -loads_per_fma, wi * vecs)
                if best is None or key > best[0]:
                    best = (key, wi, oc)
        if best is None:
            return 1, lanes
        return best[1], best[2]

    def _blocks_reduction(self, window: int, cin: int | None, oci: int) -> bool:
        """Whether a channel tile's weights (window x input channels x tile) overflow
        :data:`BLOCKED_WEIGHT_BYTES` and the input channels split into whole chunks."""
        if cin is None or cin <= REDUCTION_CHUNK or cin % REDUCTION_CHUNK:
            return False
        return 4 * window * cin * oci > BLOCKED_WEIGHT_BYTES

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        convs = [i for i, n in enumerate(names) if n.startswith(self.block_name)]
        if len(convs) != 1:
            return None
        ci = convs[0]
        if iter_types(sch, blocks[ci]) != [DATA_PAR] * 4 + [COMM_REDUCE] * 3:
            return None
        if not all(is_spatial(sch, b) for b in blocks[:ci]):
            return None
        # The conv's input copies (pad_temp, and a merged padding kernel) as one padding copy.
        padding = gather_input_copies(sch)
        producers = [padding] if padding is not None else []
        conv = sch.get_sblock(names[ci])
        epilogue = blocks[ci + 1 :]
        if not all(is_spatial(sch, b) for b in epilogue):
            return None
        loops = sch.get_loops(conv)
        if len(loops) != 7:
            return None
        n, h, w, co, rh, rw, rc = loops
        width, out_channels = extent(sch, w), extent(sch, co)
        if width is None or out_channels is None:
            return None
        channels = self.tile_channels(sch, conv, out_channels)
        if channels is None:
            return None
        # bias -> BN scale/shift -> residual add -> ReLU: one block, computed per tile.
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        wi, oci = self.pick_tiles(width, channels)
        lanes = self.vector_width(channels)
        wo, wi_loop = sch.split(w, [None, wi])
        coo, cov, coi = sch.split(co, [None, oci // lanes, lanes])
        # Reduction outside the tile: each step broadcasts one input value per column and loads
        # the weight row (contiguous in HWIO) as vectors into the accumulators.
        kh, kw, cin = (extent(sch, lp) for lp in (rh, rw, rc))
        window = (kh or 1) * (kw or 1)
        weight_elems = out_channels * window * (cin or 1)
        rows = extent(sch, h) or 1
        weights_dominate = weight_elems > rows * width * (cin or 1)
        blocked = weights_dominate and self._blocks_reduction(window, cin, oci)
        first_reduction = rh
        if blocked:
            # A channel block's weights overflow L2 (the 3x3 layers of ResNet's last stages): its
            # input channels go in chunks, every row and column of the layer is walked per chunk,
            # so a chunk's weights are reused from L1/L2 by the whole layer before the next one
            # (14x14x256 3x3: 97 -> 133 GMAC/s on one AVX-512 core).
            rco, rci = sch.split(rc, [None, REDUCTION_CHUNK])
            sch.reorder(n, coo, rco, h, wo, rh, rw, rci, wi_loop, cov, coi)
            outer = sch.fuse(n, coo)
            first_reduction = rco  # the accumulators are initialised before the first chunk
        elif weights_dominate:
            # Weights outweigh the input (late 1x1 layers, classifiers): walk the rows inside a
            # channel block so its weight slice stays in L1 instead of streaming from L3 per row.
            sch.reorder(n, coo, h, wo, rh, rw, rc, wi_loop, cov, coi)
            outer = sch.fuse(n, coo, h)
        else:
            sch.reorder(n, h, coo, wo, rh, rw, rc, wi_loop, cov, coi)
            outer = sch.fuse(n, h, coo)
        if weight_elems * rows * width >= MIN_PARALLEL_MACS:
            sch.parallel(outer)
        if epilogue:
            last = epilogue[-1]
            # After the last chunk when the reduction is blocked, else per column tile.
            sch.reverse_compute_at(last, outer if blocked else wo)
            vectorize_tail(sch, sch.get_loops(last)[-1], lanes)
        sch.unroll(wi_loop)
        sch.unroll(cov)
        sch.vectorize(coi)
        # Must follow vectorize/unroll: the other order fails with "not compact dataflow".
        sch.decompose_reduction(conv, first_reduction)
        for pad in producers:  # copies that do not pad were inlined by gather_input_copies
            sch.compute_at(pad, outer)
            pad_loops = sch.get_loops(pad)
            vectorize_tail(sch, pad_loops[-1], self.info.lanes)
        return sch


class GroupedConv2dNHWC(Conv2dNHWC):
    """Grouped NHWC conv2d with several input channels per group (ShuffleNet's grouped 1x1
    convs, ResNeXt's grouped 3x3), tiled like :class:`Conv2dNHWC`.

    Relax legalizes it as ``group_conv2d_nhwc``: the loops of a conv2d whose input channel is
    ``co // (CO / G) * (CI / G) + rc``. The fallback ran it at about 1 GMAC/s (ShuffleNet: 60 of
    its 76 ms). Channel tiles here divide a group's output channels, so a tile reads one group's
    input channels, broadcast per column as in the ungrouped conv.
    """

    block_name = "group_conv2d_nhwc"

    def tile_channels(self, sch: s_tir.Schedule, conv: s_tir.SBlockRV, out_channels: int) -> int | None:
        """A group's output channels; ``None`` (declined) for depthwise convs, which read one input
        channel per group and are :class:`DepthwiseConv2dNHWC`'s."""
        # Relax writes the update as data[...] * weight[ry, rx, rc, c]: reads in that order.
        data, weight = (region.source for region in sch.get(conv).reads[:2])
        group_inputs = int(weight.shape[2])
        groups = int(data.shape[-1]) // group_inputs
        if group_inputs == 1 or out_channels % groups:
            return None
        return out_channels // groups


class DepthwiseConv2dNHWC(Conv2dNHWC):
    """Depthwise NHWC conv2d (one input channel per output channel) with its epilogue fused in.

    Relax legalizes it as ``group_conv2d_nhwc`` (loops ``n, h, w, c, ry, rx, rc`` with ``rc`` of
    extent 1), which no other rule tiles: the fallback recomputed the padding per output element
    and ran MobileNet's depthwise layers at 1-3 GMAC/s. Here a ``wi`` x ``c`` tile of
    accumulators stays in registers while the ``ry, rx`` window streams input vectors (one per
    column, channels contiguous in NHWC) and weight vectors (one per channel vector, reused by
    every column); the padding is one parallel, vectorised pass before the kernel.
    """

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        convs = [i for i, n in enumerate(names) if n.startswith("group_conv2d_nhwc")]
        if len(convs) != 1:
            return None
        conv = blocks[convs[0]]
        producers, epilogue = blocks[: convs[0]], blocks[convs[0] + 1 :]
        if iter_types(sch, conv) != [DATA_PAR] * 4 + [COMM_REDUCE] * 3:
            return None
        if not all(sch.get(b).name_hint.startswith("pad_temp") for b in producers):
            return None
        if not all(is_spatial(sch, b) for b in epilogue):
            return None
        n, h, w, c, ry, rx, rc = sch.get_loops(conv)
        # Relax writes the update as data[...] * weight[ry, rx, rc, c]: reads in that order.
        data, weight = (region.source for region in sch.get(conv).reads[:2])
        channels = extent(sch, c)
        depthwise = int(weight.shape[2]) == 1 and int(data.shape[-1]) == channels
        if extent(sch, rc) != 1 or channels is None or not depthwise:
            return None  # grouped (several input channels per group) or a channel multiplier
        width = extent(sch, w)
        if width is None:
            return None
        for b in epilogue[:-1]:
            sch.compute_inline(b)
        lanes = self.vector_width(channels)
        vectors = min(4, channels // lanes)
        while (channels // lanes) % vectors:
            vectors -= 1
        columns = max(d for d in range(1, min(width, 16) + 1) if width % d == 0 and d * vectors <= 16)
        wo, wi = sch.split(w, [None, columns])
        # Before the fuse, which consumes the h loop.
        macs = channels * width * (extent(sch, h) or 1) * (extent(sch, ry) or 1) * (extent(sch, rx) or 1)
        co, cv, ci = sch.split(c, [None, vectors, lanes])
        sch.reorder(n, h, co, wo, ry, rx, rc, wi, cv, ci)
        outer = sch.fuse(n, h, co)
        if macs >= MIN_PARALLEL_MACS:
            sch.parallel(outer)
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], wo)
            vectorize_tail(sch, sch.get_loops(epilogue[-1])[-1], lanes)
        sch.unroll(wi)
        sch.unroll(cv)
        sch.vectorize(ci)
        sch.decompose_reduction(conv, ry)
        for pad in producers:
            pad_loops = sch.get_loops(pad)
            rows = sch.fuse(*pad_loops[:-1])
            sch.parallel(rows)
            vectorize_tail(sch, pad_loops[-1], lanes)
        return sch


class DepthwiseConvRows(CpuRule):
    """A depthwise (grouped) NHWC conv whose input is padded, with the padded input copied per
    tile of output columns instead of read through a bounds test per multiply-accumulate.

    When the padding kernel in front of the conv was merged into it (memory-first targets, so
    that the padded input never exists whole), the conv's input copy pads; inlined into the
    reduction, every read would test the bounds (about 1.5x the instructions of the unfused
    kernel on a MobileNetV2). Here each tile of ``_COLUMNS`` output columns copies the padded
    window it reads (``kh x (tile·s + kw - s) x C`` bytes), then accumulates all channels of a
    pixel from it (channels innermost, vectorised when the lanes divide them), with the
    requantization per pixel. A conv whose input copy does not pad is left to the other rules.
    """

    _COLUMNS = 8

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        convs = [
            i for i, n in enumerate(names) if n.startswith(("group_conv2d_nhwc", "depthwise_conv2d_nhwc"))
        ]
        if len(convs) != 1 or iter_types(sch, blocks[convs[0]]) != [DATA_PAR] * 4 + [COMM_REDUCE] * 3:
            return None
        epilogue = blocks[convs[0] + 1 :]
        if not all(is_spatial(sch, b) for b in blocks[: convs[0]] + epilogue):
            return None
        padding = gather_input_copies(sch)
        if padding is None:
            return None
        conv = sch.get_sblock(names[convs[0]])
        window = row_window(sch, conv)
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        n, h, w, c, ry, rx, rc = sch.get_loops(conv)
        width = extent(sch, w) or 1
        wo, wi = sch.split(w, [None, self._COLUMNS if width % self._COLUMNS == 0 else width])
        sch.reorder(n, h, wo, wi, ry, rx, rc, c)
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], wi)
            vectorize_tail(sch, sch.get_loops(epilogue[-1])[-1], self.info.lanes)
        sch.compute_at(padding, wo)
        vectorize_tail(sch, c, self.info.lanes)
        sch.decompose_reduction(conv, ry)  # after vectorize: the other order is not compact dataflow
        return with_row_window(sch, window)  # rows outermost, in order


class Matmul(CpuRule):
    """``out[..., i, j] = sum_k x[..., i, k] * W[..., k, j]`` (+ epilogue): a register tile of
    ``rows`` x ``vectors`` accumulators, vectorised over ``j``.

    This is the form Gemm/MatMul layers with constant weights take after import (the frontend
    transposes ``W`` for ``transB=1`` and FoldConstant materialises it), so the weight row for a
    given ``k`` is contiguous; batched matmuls (attention's ``Q @ K^T`` and ``P @ V``, one per
    head) have leading batch loops, which join the parallel loop. Each step of ``k`` broadcasts
    one ``x`` value per row and loads ``vectors`` rows of ``W``: ``rows`` x ``vectors`` FMAs.
    Columns that no whole vector divides are computed over a zero-padded copy of ``W``.
    """

    def pick_tiles(self, rows: int, vectors: int) -> tuple[int, int]:
        """``(rows, vectors)`` per register tile: up to 4 vectors, then as many rows as fit."""
        per_row = next(v for v in (4, 3, 2, 1) if vectors % v == 0)
        budget = min(self.info.max_accumulators, self.info.registers - per_row - 1)
        row_tile = max(r for r in range(1, min(rows, 8) + 1) if rows % r == 0 and r * per_row <= budget)
        return row_tile, per_row

    def schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        if not names or not names[0].startswith("matmul"):
            return None
        mm, epilogue = blocks[0], blocks[1:]
        kinds = iter_types(sch, mm)
        if len(kinds) < 3 or kinds != [DATA_PAR] * (len(kinds) - 1) + [COMM_REDUCE]:
            return None
        if not all(is_spatial(sch, b) for b in epilogue):
            return None
        loops = sch.get_loops(mm)
        if len(loops) != len(kinds):
            return None
        *batch, i, j, k = loops
        cols, rows = extent(sch, j), extent(sch, i)
        if cols is None or rows is None:
            return None
        lanes = self.vector_width(cols)
        if lanes < min(4, self.info.lanes):
            if rows < self.info.lanes:
                return None  # an odd column count and too few rows to repay a padded weight copy
            # An odd column count (a CTC head's 97 classes): compute whole vectors of columns from
            # a zero-padded copy of W and drop the padding in the epilogue. The fallback ran it
            # as a dot product per output over a column of W (a stride of ``cols`` per step).
            sch.pad_einsum(mm, [1] * len(batch) + [1, self.info.lanes, 1])
            blocks = root_blocks(sch)
            padded = next(n for n, b in enumerate(blocks) if sch.get(b).name_hint == names[0])
            mm, epilogue = blocks[padded], blocks[padded + 1 :]
            *batch, i, j, k = sch.get_loops(mm)
            cols, lanes = extent(sch, j) or 0, self.info.lanes
        for block in epilogue[:-1]:
            sch.compute_inline(block)
        row_tile, vectors = self.pick_tiles(rows, cols // lanes)
        # Before the fuse, which consumes the batch loops.
        macs = math.prod(extent(sch, b) or 1 for b in batch) * rows * cols * (extent(sch, k) or 1)
        io, ii = sch.split(i, [None, row_tile])
        jo, jv, ji = sch.split(j, [None, vectors, lanes])
        sch.reorder(*batch, jo, io, k, ii, jv, ji)
        # Column blocks outermost: a thread's weight slice stays in cache across its rows.
        outer = sch.fuse(*batch, jo, io)
        if macs >= MIN_PARALLEL_MACS:
            sch.parallel(outer)
        if epilogue:
            last = epilogue[-1]
            sch.reverse_compute_at(last, sch.get_loops(mm)[0])
            vectorize_tail(sch, sch.get_loops(last)[-1], lanes)
        sch.unroll(ii)
        sch.unroll(jv)
        sch.vectorize(ji)
        sch.decompose_reduction(mm, k)
        return sch
