"""The int8 dot-product micro-kernel rule that x86 (``vpmaddwd``, ``vpdpbusd``) and AArch64 (``sdot``,
``smull``/``sadalp``) instantiate.

Each instruction multiplies ``group`` consecutive int8 reduction values of one input pixel by the
same ``group`` values of ``lanes`` output channels and adds each group's products into one int32
lane: the tensor intrinsic :func:`dot_product_func` ``(lanes, group)``::

    C[j] += Σ_k int32(A[k]) · int32(B[j, k])          j < lanes, k < group

The weights are stored group-interleaved, ``W'[..., r/g, c/L, c%L, r%g] = W[..., r, c]``
(:func:`pair_interleave`; HWIO conv weights and ``x @ W`` matmul weights alike, the reduction
axis second to last and the output channel last), so one vector load gives ``B``. A rule whose
intrinsic takes ``quads`` groups at once (AArch64's lane-indexed ``sdot``) stores
``W'[..., r/(gq), c/L, r%(gq)/g, c%L, r%g]``: the ``quads`` weight vectors of one step in a row.
:class:`Int8DotProductConv` rewrites the kernel's weight parameter to that layout, tiles ``wi``
output columns by ``lanes·v`` output channels (``wi·v`` accumulator registers,
:meth:`Int8DotProductConv.pick_tiles`), puts the reduction outside the tile and tensorizes the
innermost ``lanes x group·quads`` step. Anything that does not fit - a reduction not a multiple
of ``group·quads`` (a first layer on a grey or RGB image), output channels not a multiple of ``lanes``,
grouped or depthwise convolutions, float, packed weights - returns ``None`` and falls back to the
next rule. The rule records the layout in the function attribute :data:`WEIGHT_LAYOUT_ATTR` and
:func:`relayout_constant_weights` applies it to the Relax module's constants at build time
(:mod:`.int8_rules`); :func:`.build.optimize_for_cpu` calls it. A kernel that reads its input
shifted (``vpdpbusd`` multiplies unsigned bytes) records :data:`SHIFT_ATTR`, folded into its bias.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T

from .int8_rules import Int8MicroKernelRule, Int8Reduction, kernel_layouts, loop_extent, match_int8_reduction
from .int8_rules import relayout_constant_weights as _relayout

__all__ = [
    "INSTRUCTION_ATTR",
    "SHIFT_ATTR",
    "WEIGHT_LAYOUT_ATTR",
    "Int8DotProductConv",
    "dot_product_func",
    "micro_kernel",
    "pair_interleave",
    "register_dot_product",
    "relayout_constant_weights",
    "weight_layout",
]

# Recorded by the rule ({parameter: [group, lanes(, quads)]}), renamed to the applied form once the
# constants are re-laid out (so a second relayout is a no-op and tests can find the kernels).
WEIGHT_LAYOUT_ATTR = "edgec.int8_weight_layout"
APPLIED_LAYOUT_ATTR = "edgec.int8_weight_layout_applied"
# The instruction of the kernel (``sdot``), for the manifest's micro_kernels section.
INSTRUCTION_ATTR = "edgec.int8_micro_kernel"
# {bias parameter: [weight parameter, shift]}: an input shift the build folds into the bias.
SHIFT_ATTR = "edgec.int8_input_shift"

_MAX_VECTORS = 8  # output-channel vectors per tile
_TAIL_LANES = 8  # the epilogue and padding copies are vectorised in chunks of 8


def dot_product_func(
    lanes: int, group: int, step: Callable[[Any, Any, Any], Any] | None = None, quads: int = 1
) -> tirx.PrimFunc:
    """The two functions of an int8 dot-product tensor intrinsic: without ``step``, what it computes
    (the tensorize pattern: ``lanes`` int32 accumulators, each adding ``group·quads`` int8 products,
    ``C[j] += Σ_k A[k] · B[j, k]``, ``B[k/group, j, k%group]`` when ``quads`` > 1: the layout of
    :func:`pair_interleave`); with it, ``C[0:lanes] = step(A, B, C)``, where ``A`` holds the input
    bytes, ``B`` the weight bytes and ``C`` the accumulators. ``step`` returns one TIR expression
    (no locals: they would become workspace allocations). Python ``if``: the parser keeps one branch."""
    weights = (lanes, group) if quads == 1 else (quads, lanes, group)

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group * quads,), "int8", offset_factor=1)
        B = T.match_buffer(b, weights, "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            if quads == 1:
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            else:
                T.reads(C[0:lanes], A[0 : group * quads], B[0:quads, 0:lanes, 0:group])
            T.writes(C[0:lanes])
            if step is None:
                for j, k in T.grid(lanes, group * quads):
                    with T.sblock("update"):
                        vj, vk = T.axis.remap("SR", [j, k])
                        if quads == 1:
                            C[vj] = C[vj] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vj, vk])
                        else:
                            w = T.meta_var(B[vk // group, vj, vk % group])
                            C[vj] = C[vj] + T.Cast("int32", A[vk]) * T.Cast("int32", w)
            else:
                C[T.ramp(0, 1, lanes)] = step(A, B, C)

    return func


def register_dot_product(
    name: str, lanes: int, group: int, step: Callable[[Any, Any, Any], Any], quads: int = 1
) -> str:
    """Registers the tensor intrinsic ``name`` computing :func:`dot_product_func` ``(lanes, group,
    quads=quads)`` with ``step``; returns ``name``."""
    desc, impl = dot_product_func(lanes, group, quads=quads), dot_product_func(lanes, group, step, quads)
    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    return name


def pair_interleave(weight: np.ndarray, layout: list[int]) -> np.ndarray:
    """``W'[..., r/(pq), c/l, r%(pq)/p, c%l, r%p] = W[..., r, c]`` for ``layout = [p, l, q]`` (numpy,
    build time; ``q`` = 1, or absent: ``W'[..., r/p, c/l, c%l, r%p]``)."""
    pair, lanes, quads = (*layout, 1)[:3]
    *lead, reduction, channels = weight.shape
    split = weight.reshape(*lead, reduction // (pair * quads), quads, pair, channels // lanes, lanes)
    k = len(lead)
    interleaved = split.transpose(*range(k), k, k + 3, k + 1, k + 4, k + 2)
    return np.ascontiguousarray(interleaved if len(layout) > 2 else interleaved.squeeze(k + 2))


class Int8DotProductConv(Int8MicroKernelRule):
    """A dot-product micro-kernel schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (module docstring).

    Subclasses set the class attributes: ``lanes`` int32 accumulators per vector register,
    ``group`` products summed per lane (the reduction step of the intrinsic), ``intrinsic`` (a
    registered tensor intrinsic computing :func:`dot_product_func` ``(lanes, group)``),
    ``instruction`` (its name in the manifest), ``max_accumulators`` per tile; and
    ``is_target_available``.
    """

    lanes: int
    group: int
    intrinsic: str
    instruction: str
    max_accumulators: int
    quads: int = 1  # groups per tensorized step (the intrinsic reads quads·group inputs at once)

    def pick_tiles(self, width: int, vectors: int) -> tuple[int, int]:
        """``(columns, channel vectors)`` per tile for a layer ``width`` wide with ``lanes·vectors``
        channels.

        Both divide the layer (a tail would put a predicate into the tensorized step). Most
        accumulators first (up to ``max_accumulators``), then the most channel vectors: each
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
        step = self.group * self.quads
        if found is None or found.reduction % step or found.channels % self.lanes:
            return None
        annotations = self._annotations(func, found)
        if annotations is None:
            return None
        for key, value in annotations.items():
            func = func.with_attr(key, value)
        sch = s_tir.Schedule(func)
        main = sch.get_sblock(found.block)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        names = [sch.get(b).name_hint for b in blocks]
        producers = blocks[: names.index(found.block)]
        epilogue = blocks[names.index(found.block) + 1 :]
        group, lanes = self.group, self.lanes
        if self.quads == 1:
            sch.transform_layout(
                main,
                found.weight,
                lambda *i: (*i[:-2], i[-2] // group, i[-1] // lanes, i[-1] % lanes, i[-2] % group),
            )
        else:
            sch.transform_layout(
                main,
                found.weight,
                lambda *i: (
                    *i[:-2],
                    i[-2] // step,
                    i[-1] // lanes,
                    i[-2] % step // group,
                    i[-1] % lanes,
                    i[-2] % group,
                ),
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
        *_, columns, vectors, lane_loop, _step = sch.get_loops(main)
        sch.tensorize(lane_loop, self.intrinsic)
        sch.unroll(columns)
        sch.unroll(vectors)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch

    def _annotations(self, func: tirx.PrimFunc, found: Int8Reduction) -> dict[str, Any] | None:
        """The function attributes of the scheduled kernel (the weight layout the build-time
        relayout applies, the instruction), or ``None`` when the kernel cannot take the rule."""
        return {
            WEIGHT_LAYOUT_ATTR: {
                found.weight_param: [self.group, self.lanes, *([self.quads] * (self.quads > 1))]
            },
            INSTRUCTION_ATTR: self.instruction,
        }

    def _tile_conv(self, sch: s_tir.Schedule, main: Any, found: Int8Reduction) -> tuple[Any, Any]:
        n, h, w, co, ry, rx, rc = sch.get_loops(main)
        _, height, width, channels, kh, kw, cin = found.extents
        wi, v = self.pick_tiles(width, channels // self.lanes)
        wo, wi_loop = sch.split(w, [None, wi])
        coo, cov, coi = sch.split(co, [None, v, self.lanes])
        rco, rci = sch.split(rc, [None, self.group * self.quads])
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
        ko, ki = sch.split(k, [None, self.group * self.quads])
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
    if ext is None or ext % _TAIL_LANES:
        return
    if ext == _TAIL_LANES:
        sch.vectorize(loop)
        return
    sch.vectorize(sch.split(loop, [None, _TAIL_LANES])[1])


def weight_layout(func: Any) -> dict[int, list[int]]:
    """``{parameter index: [group, lanes]}`` of a kernel :class:`Int8DotProductConv` scheduled, else ``{}``.

    Finds the kernels both before and after :func:`relayout_constant_weights`.
    """
    return kernel_layouts(func, WEIGHT_LAYOUT_ATTR) or kernel_layouts(func, APPLIED_LAYOUT_ATTR)


def micro_kernel(func: Any) -> str | None:
    """The instruction of a kernel :class:`Int8DotProductConv` scheduled (``sdot``), else ``None``."""
    if not isinstance(func, tirx.PrimFunc) or func.attrs is None or INSTRUCTION_ATTR not in func.attrs:
        return None
    return str(func.attrs[INSTRUCTION_ATTR])


def relayout_constant_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Group-interleaves (:func:`pair_interleave`) the constant weights of the dot-product kernels
    (and folds an input shift into their bias).

    A no-op when no kernel was scheduled that way, or when the weights already were re-laid out.
    Raises :class:`EdgecError` when such a weight is not a constant.
    """
    return _relayout(
        mod, WEIGHT_LAYOUT_ATTR, pair_interleave, "int8 dot-product", APPLIED_LAYOUT_ATTR, SHIFT_ATTR
    )
