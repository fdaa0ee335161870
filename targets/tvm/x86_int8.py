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
c/8, c%8, r%2] = W[..., r, c]``. :class:`Int8PmaddwdConv` is :class:`.int8_dot.Int8DotProductConv`
(the layout, tiling, tensorization and fallbacks shared with the VNNI and AArch64 rules) with
that intrinsic, in front of edgec's CPU rules on x86 targets with AVX2 (``x86``, ``x86-64-v3``).
``edgec compile --no-micro-kernels`` switches the rule off (for comparisons).

On CPUs with VNNI the ``vpdpbusd`` rule (:mod:`.x86_vnni`, this rule with 4 products per lane
and 16 or 8 lanes) comes first; what it declines still gets this one.
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.target import Target

from .int8_dot import Int8DotProductConv, register_dot_product

__all__ = ["PMADDWD_INTRIN", "Int8PmaddwdConv", "has_avx2"]

_LANES, _PAIR = 8, 2  # int32 accumulators per ymm register; int16 products per lane
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


def _pmaddwd(A, B, C):
    # The input pair as one int16, broadcast to 8 int16 (= 16 bytes x0 x1 x0 x1 ...), then
    # sign-extended to 16 int16: vpbroadcastw + vpmovsxbw.
    pair = T.reinterpret("int16", A.vload([0], "int8x2"))
    x = T.Cast("int16x16", T.reinterpret("int8x16", T.broadcast(pair, 8)))
    w = T.Cast("int16x16", B.vload([0, 0], "int8x16"))
    return C.vload([0], "int32x8") + T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", x, w)


PMADDWD_INTRIN = register_dot_product("edgec_x86_pmaddwd_8x2_i8i8i32", _LANES, _PAIR, _pmaddwd)


class Int8PmaddwdConv(Int8DotProductConv):
    """``vpmaddwd`` schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (see the module docstring)."""

    lanes = _LANES
    group = _PAIR
    intrinsic = PMADDWD_INTRIN
    instruction = "vpmaddwd"
    max_accumulators = _MAX_ACCUMULATORS

    def is_target_available(self, target: Target) -> bool:
        return has_avx2(target)
