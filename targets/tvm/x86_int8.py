"""int8 conv2d/matmul kernels with AVX2 ``vpmaddwd`` for x86.

LLVM vectorizes edgec's int8 x int8 -> int32 reduction for AVX2 as sign-extend, 32-bit multiply
(``vpmulld``, slow on every x86 core) and add: one multiply-accumulate per 32-bit lane for about
three instructions, which made the int8 squeezenet 1.3-1.8x slower than the float one. ``vpmaddwd``
(``llvm.x86.avx2.pmadd.wd``) multiplies 16 int16 pairs and adds adjacent products into 8 int32
lanes::

    pmaddwd(a, b)[j] = a[2j] · b[2j] + a[2j+1] · b[2j+1]              j = 0..7

For int8 values sign-extended to int16 this is exact: each product is at most 128² = 2^14, the
pair sum at most 2^15, far inside int32 (the one case that wraps, two (-2^15)² products, needs
int16 inputs), and int32 accumulation wraps exactly as the plain kernel's does: the kernels stay
bit-exact with it and with the numpy reference. The micro-kernel (:data:`PMADDWD_INTRIN`) takes
two consecutive input channels ``rc, rc+1`` for 8 output channels ``co..co+7``::

    x2  = *(int16 *)&x[rc]                             (2 int8, one load)
    xb  = sext16(broadcast16(x2))                      vpbroadcastw + vpmovsxbw: x[rc], x[rc+1], ... x 8
    wv  = sext16(*(int8x16 *)&W'[rc/2, co/8])          vpmovsxbw from memory: W[rc, co], W[rc+1, co], ...
    acc = acc + pmaddwd(xb, wv)                        16 multiply-accumulates, two instructions

which needs each group of 8 output channels' weights stored pair-interleaved: ``W'[..., r/2,
c/8, c%8, r%2] = W[..., r, c]`` (HWIO conv weights and ``x @ W`` matmul weights alike, the
reduction axis second to last and the output channel last). :class:`Int8PmaddwdConv` is a
schedule rule in front of edgec's CPU rules on x86 targets with AVX2 (``x86``, ``x86-64-v3``):
it rewrites the weight parameter to that layout, tiles ``wi`` output columns by ``8·v`` output
channels (``wi·v`` accumulator registers, :meth:`Int8PmaddwdConv.pick_tiles`), puts the reduction
outside the tile and tensorizes the innermost ``8 x 2`` step. Anything that does not fit - an odd
reduction (a first layer on a grey or RGB image), output channels not a multiple of 8, grouped or
depthwise convolutions, float, packed weights - returns ``None`` and falls back to the plain
rules. :func:`relayout_constant_weights` applies the weight layout to the Relax module's
constants at build time (:mod:`.int8_rules`); :func:`.build.optimize_for_cpu` calls it.
``edgec compile --no-micro-kernels`` switches the rule off (for comparisons).

On CPUs with VNNI the ``vpdpbusd`` rule (:mod:`.x86_vnni`, this rule with 4 products per lane
and 16 or 8 lanes) comes first; what it declines still gets this one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from .int8_rules import Int8MicroKernelRule, Int8Reduction, kernel_layouts, loop_extent, match_int8_reduction
from .int8_rules import relayout_constant_weights as _relayout

__all__ = [
    "MICRO_KERNEL_BY_GROUP",
    "PMADDWD_INTRIN",
    "WEIGHT_LAYOUT_ATTR",
    "Int8PmaddwdConv",
    "dot_product_desc",
    "has_avx2",
    "pair_interleave",
    "relayout_constant_weights",
    "weight_layout",
]

PMADDWD_INTRIN = "edgec_x86_pmaddwd_8x2_i8i8i32"
# Recorded by the rule ({parameter: [pair, lanes]}), renamed to the applied form once the
# constants are re-laid out (so a second relayout is a no-op and tests can find the kernels).
WEIGHT_LAYOUT_ATTR = "edgec.x86_int8_weight_layout"
APPLIED_LAYOUT_ATTR = "edgec.x86_int8_weight_layout_applied"

_LANES, _PAIR = 8, 2  # int32 accumulators per ymm register; int16 products per lane
# The instruction of a kernel, by the products per lane of its weight layout (4: .x86_vnni).
MICRO_KERNEL_BY_GROUP = {_PAIR: "vpmaddwd", 4: "vpdpbusd"}
_MAX_VECTORS = 8  # output-channel vectors per tile
# Accumulators per tile. The weights come from memory as vpmovsxbw operands and one register
# holds the broadcast input, so 8-12 fit in the 16 ymm registers; measured on znver3 (3x3 and
# 1x1 convs, 12-55 wide), 1 column x 8 vectors and 2 x 4 beat 5 x 2 and 13 x 1 by 20-40 %.
_MAX_ACCUMULATORS = 8


def has_avx2(target: Target | dict) -> bool:
    """Whether ``target`` is an x86 LLVM target whose CPU has AVX2."""
    from tvm.target import codegen

    target = target if isinstance(target, Target) else Target(target)
    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return False
    with target:
        return bool(codegen.target_has_features("avx2", target))


def dot_product_desc(lanes: int, group: int) -> tirx.PrimFunc:
    """What an int8 dot-product micro-kernel computes, as the tensorize pattern: ``lanes`` int32
    accumulators, each adding ``group`` int8 products, ``C[j] += Σ_k A[k] · B[j, k]``."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes, group), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for j, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vj, vk = T.axis.remap("SR", [j, k])
                    C[vj] = C[vj] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vj, vk])

    return desc


@T.prim_func(s_tir=True)
def _pmaddwd_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (2,), "int8", offset_factor=1)
    B = T.match_buffer(b, (8, 2), "int8", offset_factor=1)
    C = T.match_buffer(c, (8,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        # The input pair as one int16, broadcast to 8 int16 (= 16 bytes x0 x1 x0 x1 ...), then
        # sign-extended to 16 int16: vpbroadcastw + vpmovsxbw (meta_var: expressions, not locals,
        # which would become workspace allocations).
        pair = T.meta_var(T.reinterpret("int16", A.vload([0], "int8x2")))
        x = T.meta_var(T.Cast("int16x16", T.reinterpret("int8x16", T.broadcast(pair, 8))))
        w = T.meta_var(T.Cast("int16x16", B.vload([0, 0], "int8x16")))
        C[T.ramp(0, 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
            "int32x8", "llvm.x86.avx2.pmadd.wd", x, w
        )


s_tir.TensorIntrin.register(PMADDWD_INTRIN, dot_product_desc(_LANES, _PAIR), _pmaddwd_impl, override=True)


def pair_interleave(weight: np.ndarray, layout: list[int]) -> np.ndarray:
    """``W'[..., r/p, c/l, c%l, r%p] = W[..., r, c]`` for ``layout = [p, l]`` (numpy, build time)."""
    pair, lanes = layout
    *lead, reduction, channels = weight.shape
    split = weight.reshape(*lead, reduction // pair, pair, channels // lanes, lanes)
    k = len(lead)
    return np.ascontiguousarray(split.transpose(*range(k), k, k + 2, k + 3, k + 1))


class Int8PmaddwdConv(Int8MicroKernelRule):
    """``vpmaddwd`` schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (see the module docstring).

    Class attributes, which a wider dot-product rule (:mod:`.x86_vnni`) overrides: ``lanes``
    int32 accumulators per vector register, ``group`` products summed per lane (the reduction
    step of the intrinsic), ``intrinsic``, ``max_accumulators`` per tile.
    """

    lanes = _LANES
    group = _PAIR
    intrinsic = PMADDWD_INTRIN
    max_accumulators = _MAX_ACCUMULATORS

    def is_target_available(self, target: Target) -> bool:
        return has_avx2(target)

    def pick_tiles(self, width: int, vectors: int) -> tuple[int, int]:
        """``(columns, channel vectors)`` per tile for a layer ``width`` wide with ``8·vectors`` channels.

        Both divide the layer (a tail would put a predicate into the tensorized step). Most
        accumulators first (up to :data:`_MAX_ACCUMULATORS`), then the most channel vectors: each
        broadcast input (two instructions) feeds ``v`` of them, while a weight vector is one
        load-and-extend whether it is reused or not.
        """
        best = (0, 0, 1, 1)
        for v in range(1, min(vectors, _MAX_VECTORS) + 1):
            if vectors % v:
                continue
            for wi in range(1, min(width, self.max_accumulators) + 1):
                if width % wi == 0 and wi * v <= self.max_accumulators:
                    best = max(best, (wi * v, v, wi, v))
        return best[2], best[3]

    def _schedule(self, func: tirx.PrimFunc) -> s_tir.Schedule | None:
        found = match_int8_reduction(func, s_tir.Schedule(func))
        if found is None or found.reduction % self.group or found.channels % self.lanes:
            return None
        sch = self._annotated_schedule(func, found)
        if sch is None:
            return None
        main = sch.get_sblock(found.block)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        names = [sch.get(b).name_hint for b in blocks]
        producers = blocks[: names.index(found.block)]
        epilogue = blocks[names.index(found.block) + 1 :]
        group, lanes = self.group, self.lanes
        sch.transform_layout(
            main,
            found.weight,
            lambda *idx: (*idx[:-2], idx[-2] // group, idx[-1] // lanes, idx[-1] % lanes, idx[-2] % group),
        )
        if found.conv:
            outer, tile = self._tile_conv(sch, main, found)
            first_reduce = sch.get_loops(main)[2]  # after (outer, wo): ry
        else:
            outer, tile = self._tile_matmul(sch, main, found)
            first_reduce = sch.get_loops(main)[2]  # after (jo, i): ko
        for pad in producers:  # before tensorize: a buffer matched into it cannot move
            self._schedule_padding(sch, pad, outer)
        for block in epilogue[:-1]:
            sch.compute_inline(block)  # bias -> requantize -> clamp: one block, computed per tile
        if epilogue:
            sch.reverse_compute_at(epilogue[-1], tile)
            _vectorize_tail(sch, sch.get_loops(epilogue[-1])[-1])
        init = sch.decompose_reduction(main, first_reduce)
        *_, columns, vectors, lane_loop, _group = sch.get_loops(main)
        sch.tensorize(lane_loop, self.intrinsic)
        sch.unroll(columns)
        sch.unroll(vectors)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch

    def _annotated_schedule(self, func: tirx.PrimFunc, found: Int8Reduction) -> s_tir.Schedule | None:
        """A schedule of ``func`` carrying the weight layout the build-time relayout applies."""
        layout = {found.weight_param: [self.group, self.lanes]}
        return s_tir.Schedule(func.with_attr(WEIGHT_LAYOUT_ATTR, layout))

    def _tile_conv(self, sch: s_tir.Schedule, main: Any, found: Int8Reduction) -> tuple[Any, Any]:
        n, h, w, co, ry, rx, rc = sch.get_loops(main)
        _, height, width, channels, kh, kw, cin = found.extents
        wi, v = self.pick_tiles(width, channels // self.lanes)
        wo, wi_loop = sch.split(w, [None, wi])
        coo, cov, coi = sch.split(co, [None, v, self.lanes])
        rco, rci = sch.split(rc, [None, self.group])
        if channels * kh * kw * cin > height * width * cin:
            # Weights outweigh the input (late 1x1 layers, the classifier): rows inside a channel
            # block, so its weight slice stays in L1 (as the float rule does).
            sch.reorder(n, coo, h, wo, ry, rx, rco, wi_loop, cov, coi, rci)
            outer = sch.fuse(n, coo, h)
        else:
            sch.reorder(n, h, coo, wo, ry, rx, rco, wi_loop, cov, coi, rci)
            outer = sch.fuse(n, h, coo)
        sch.parallel(outer)
        return outer, wo

    def _tile_matmul(self, sch: s_tir.Schedule, main: Any, found: Int8Reduction) -> tuple[Any, Any]:
        i, j, k = sch.get_loops(main)
        _, v = self.pick_tiles(1, found.channels // self.lanes)
        jo, jv, ji = sch.split(j, [None, v, self.lanes])
        ko, ki = sch.split(k, [None, self.group])
        one = sch.split(i, [None, 1])[1]  # the tile's "columns" loop (one row)
        sch.reorder(jo, sch.get_loops(main)[0], ko, one, jv, ji, ki)
        if found.channels // (self.lanes * v) > 1:
            sch.parallel(jo)
        return jo, sch.get_loops(main)[1]

    @staticmethod
    def _schedule_padding(sch: s_tir.Schedule, pad: Any, outer: Any) -> None:
        block = sch.get(pad)
        src, dst = block.reads[0].source.shape, block.writes[0].source.shape
        if [int(d) for d in src] == [int(d) for d in dst]:
            sch.compute_inline(pad)  # a plain copy (the zero-point padding is a Relax op before)
            return
        sch.compute_at(pad, outer)
        _vectorize_tail(sch, sch.get_loops(pad)[-1])


def _vectorize_tail(sch: s_tir.Schedule, loop: Any) -> None:
    """Vectorise ``loop`` in chunks of 8 when its extent is a multiple of 8."""
    ext = loop_extent(sch, loop)
    if ext is None or ext % _LANES:
        return
    if ext == _LANES:
        sch.vectorize(loop)
        return
    sch.vectorize(sch.split(loop, [None, _LANES])[1])


def weight_layout(func: Any) -> dict[int, list[int]]:
    """``{parameter index: [pair, lanes]}`` of a kernel :class:`Int8PmaddwdConv` scheduled, else ``{}``.

    Finds the kernels both before and after :func:`relayout_constant_weights`.
    """
    return kernel_layouts(func, WEIGHT_LAYOUT_ATTR) or kernel_layouts(func, APPLIED_LAYOUT_ATTR)


def relayout_constant_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Pair-interleaves (:func:`pair_interleave`) the constant weights of the ``vpmaddwd`` and
    ``vpdpbusd`` kernels (and folds the latter's input shift into their bias).

    A no-op when no kernel was scheduled that way, or when the weights already were re-laid out.
    Raises :class:`EdgecError` when such a weight is not a constant.
    """
    from .x86_vnni import SHIFT_ATTR

    return _relayout(mod, WEIGHT_LAYOUT_ATTR, pair_interleave, "x86 int8", APPLIED_LAYOUT_ATTR, SHIFT_ATTR)
