"""int8 conv2d/matmul kernels with VNNI ``vpdpbusd`` (AVX-512 VNNI, AVX-VNNI) for x86.

``vpdpbusd`` multiplies 4 unsigned bytes by 4 signed bytes and adds the four products to an
int32 lane, 16 lanes per zmm (8 per ymm): 64 multiply-accumulates in one instruction, twice
``vpmaddwd``'s 16 per two instructions (:mod:`.x86_int8`). It needs one operand unsigned; edgec's
activations are signed int8, so the kernel feeds ``x + 128`` (``x XOR 0x80``: the same byte as
unsigned) and the build folds the shift into the bias, which every integer conv/matmul adds
right after the reduction (:mod:`edgec.targets.integer.conv`)::

    Σ (x + 128) · w  =  Σ x · w  +  128 · Σ w        bias'[c] = bias[c] - 128 · Σ w[.., c]

Products of an unsigned byte (< 256) and a signed one (|w| <= 128) stay below 2^15, their sum of
four below 2^17: exact in int32, and the accumulation wraps as the plain kernel's does, so the
kernels stay bit-exact. Weights are stored quad-interleaved, ``W'[..., r/4, c/L, c%L, r%4] =
W[..., r, c]`` (:func:`.int8_dot.pair_interleave` with ``[4, L]``). :class:`Int8VnniConv` is the
vpmaddwd rule with those constants: reduction a multiple of 4, channels of ``L``; what it
declines (a first layer with 1-3 input channels, 8-channel widths) falls to the vpmaddwd rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from .int8_dot import SHIFT_ATTR, register_dot_product
from .int8_rules import Int8Reduction
from .x86_int8 import Int8PmaddwdConv

__all__ = ["VNNI_INTRINSICS", "Int8VnniConv", "vnni_lanes"]

_SHIFT = 128  # the input shift (x + 128 as an unsigned byte) the build folds into the bias
_SIGN_BITS = -2139062144  # 0x80808080: XOR flips each byte's sign bit (x -> x + 128 as unsigned)


def vnni_lanes(target: Target) -> int:
    """int32 lanes of the target's ``vpdpbusd``: 16 with AVX-512 VNNI, 8 with AVX-VNNI, else 0."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return 0
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return 0
    with target:
        if codegen.target_has_features("avx512vnni", target) and codegen.target_has_features(
            "avx512bw", target
        ):
            return 16
        return 8 if codegen.target_has_features("avxvnni", target) else 0


def _vpdpbusd(lanes: int) -> Callable[[Any, Any, Any], Any]:
    def step(A, B, C):
        # The 4 input bytes as one int32, sign bits flipped (x + 128, unsigned), broadcast, as
        # bytes again (LLVM's vpdpbusd takes byte vectors). The flip is scalar, before the
        # broadcast: a vector XOR of the broadcast sends the LLVM of TVM 0.27 into an endless
        # loop on znver4/znver5 with 512-bit vectors.
        quad = T.reinterpret("int32", A.vload([0], "int8x4"))
        flipped = T.broadcast(T.bitwise_xor(quad, T.int32(_SIGN_BITS)), lanes)
        x = T.reinterpret(f"int8x{4 * lanes}", flipped)
        w = B.vload([0, 0], f"int8x{4 * lanes}")
        acc = C.vload([0], f"int32x{lanes}")
        return T.call_llvm_pure_intrin(f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", acc, x, w)

    return step


VNNI_INTRINSICS = {
    lanes: register_dot_product(f"edgec_x86_vpdpbusd_{lanes}x4_i8i8i32", lanes, 4, _vpdpbusd(lanes))
    for lanes in (8, 16)
}


class Int8VnniConv(Int8PmaddwdConv):
    """``vpdpbusd`` schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (see the module docstring)."""

    group = 4
    instruction = "vpdpbusd"

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.intrinsic = VNNI_INTRINSICS[lanes]
        # zmm: 32 registers, one for the input, a few for weight vectors; ymm (AVX-VNNI): 16.
        self.max_accumulators = 24 if lanes == 16 else 8

    def is_target_available(self, target: Target) -> bool:
        return vnni_lanes(target) == self.lanes

    def _annotations(self, func: tirx.PrimFunc, found: Int8Reduction) -> dict[str, Any] | None:
        bias = _bias_param(func, found)
        if bias is None:
            return None  # no per-channel int32 bias right after the reduction to fold the shift into
        return {**super()._annotations(func, found), SHIFT_ATTR: {bias: [found.weight_param, _SHIFT]}}


def _bias_param(func: tirx.PrimFunc, found: Int8Reduction) -> int | None:
    """The parameter index of the int32 per-channel constant the first epilogue block adds to the
    accumulator (``acc + bias[c]``), or ``None`` when the kernel has no such block."""
    import tvm

    sch = s_tir.Schedule(func)
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in blocks]
    after = names.index(found.block) + 1
    if after >= len(blocks):
        return None
    accumulator = sch.get(blocks[after - 1]).writes[0].source
    value = getattr(sch.get(blocks[after]).body, "value", None)
    if not isinstance(value, tirx.Add):
        return None
    loads = [o for o in (value.a, value.b) if isinstance(o, tvm.ir.TensorLoad)]
    others = [load.source for load in loads if not load.source.same_as(accumulator)]
    if len(loads) != 2 or len(others) != 1:
        return None
    bias = others[0]
    shape = [int(d) for d in bias.shape]
    if str(bias.dtype) != "int32" or shape[-1] != found.channels or any(d != 1 for d in shape[:-1]):
        return None
    params = [i for i, p in enumerate(func.params) if p.name == bias.name]
    return params[0] if len(params) == 1 else None
