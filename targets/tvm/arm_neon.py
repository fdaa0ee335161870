"""int8 conv2d/matmul kernels with AArch64 NEON dot products: ``sdot`` (ARMv8.2-A dot product:
Cortex-A55, A76) and ``smull`` + ``sadalp`` (every ARMv8.0-A core: Cortex-A53, A72).

LLVM vectorizes edgec's int8 x int8 -> int32 reduction for AArch64 through the float rules' int32
lanes: each input byte is broadcast and sign-extended on its own (``dup``, ``uxtl``, ``shl``,
``sshr``, ``xtn``) before one ``smlal`` of four multiply-accumulates, about 2 instructions per
MAC where the float build's ``fmla`` does four MACs in one: the int8 squeezenet executed 2.9x the
instructions of the float one under qemu-aarch64. Two micro-kernels replace that inner step
(:class:`.int8_dot.Int8DotProductConv` with these intrinsics; layout, tiling and fallbacks are
shared with the x86 rules)::

    sdot  (4 lanes x 4):  x4 = dup(*(int32 *)&x[rc])                    (4 input bytes, broadcast)
                          acc = sdot(acc, W'[rc/4, co/4], x4)           16 MACs, one instruction
    sadalp (4 lanes x 2): x2 = dup(*(int16 *)&x[rc])                    (2 input bytes, broadcast)
                          acc = sadalp(acc, smull(W'[rc/2, co/4], x2))  8 MACs, two instructions

``sdot`` adds four int8 products into each int32 lane, exact. ``smull`` multiplies 8 int8 pairs
into int16 (|product| <= 128² = 2^14, exact) and ``sadalp`` adds adjacent int16 pairs into the
int32 accumulator (no int16 sum, so nothing wraps before the int32 accumulation, which wraps
exactly as the plain kernel's): both stay bit-exact with the plain kernels and the numpy
reference. The weights are stored group-interleaved for 4 output channels per vector
(:func:`.int8_dot.pair_interleave` with ``[4, 4]`` or ``[2, 4]``). :class:`Int8NeonConv` ``("sdot")``
runs on targets whose CPU has the dot-product extension (:func:`has_dotprod`); what it declines (a
reduction not a multiple of 4) and every kernel of a core without it gets ``("sadalp")``
(reductions of even length). A first layer on an RGB image (3 input channels) keeps the plain
rules. ``edgec compile --no-micro-kernels`` switches both off (for comparisons).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.script import tirx as T
from tvm.target import Target

from .int8_dot import Int8DotProductConv, register_dot_product

__all__ = ["SADALP_INTRIN", "SDOT_INTRIN", "Int8NeonConv", "has_dotprod", "is_aarch64"]

_LANES = 4  # int32 lanes of a 128-bit NEON register
# Accumulators per tile: 32 NEON registers hold them, one weight vector per channel vector of
# the tile and the broadcast input.
_MAX_ACCUMULATORS = 24


def _llvm_aarch64(target: Target | dict) -> Target | None:
    target = target if isinstance(target, Target) else Target(target)
    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "") or "").startswith("aarch64"):
        return None
    return target


def is_aarch64(target: Target | dict) -> bool:
    """Whether ``target`` is an AArch64 LLVM target (NEON is part of every AArch64 core)."""
    return _llvm_aarch64(target) is not None


def has_dotprod(target: Target | dict) -> bool:
    """Whether ``target`` is an AArch64 LLVM target whose CPU has the dot-product extension
    (``mcpu`` cortex-a55/a76 imply it, ``mattr`` ``+dotprod`` adds it)."""
    from tvm.target import codegen

    aarch64 = _llvm_aarch64(target)
    if aarch64 is None:
        return False
    with aarch64:
        return bool(codegen.target_has_features("dotprod", aarch64))


def _sdot(A, B, C):
    # The 4 input bytes as one int32 broadcast to every lane (ld1r), 4 products per lane.
    x = T.reinterpret("int8x16", T.broadcast(T.reinterpret("int32", A.vload([0], "int8x4")), 4))
    acc = C.vload([0], "int32x4")
    return T.call_llvm_pure_intrin(
        "int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, B.vload([0, 0], "int8x16"), x
    )


def _sadalp(A, B, C):
    # The input pair as one int16 broadcast to 4 (= 8 bytes x0 x1 x0 x1 ...); smull's 8 int16
    # products, pairwise added into the accumulator: LLVM folds the add of saddlp into sadalp.
    x = T.reinterpret("int8x8", T.broadcast(T.reinterpret("int16", A.vload([0], "int8x2")), 4))
    products = T.call_llvm_pure_intrin(
        "int16x8", "llvm.aarch64.neon.smull.v8i16", B.vload([0, 0], "int8x8"), x
    )
    pairs = T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.saddlp.v4i32.v8i16", products)
    return C.vload([0], "int32x4") + pairs


SDOT_INTRIN = register_dot_product("edgec_aarch64_sdot_4x4_i8i8i32", _LANES, 4, _sdot)
SADALP_INTRIN = register_dot_product("edgec_aarch64_smull_sadalp_4x2_i8i8i32", _LANES, 2, _sadalp)


# instruction -> (input channels per step, tensor intrinsic, whether a target has it)
_KERNELS: dict[str, tuple[int, str, Callable[[Target | dict], bool]]] = {
    "sdot": (4, SDOT_INTRIN, has_dotprod),
    "sadalp": (2, SADALP_INTRIN, is_aarch64),
}


class Int8NeonConv(Int8DotProductConv):
    """``sdot`` or ``smull`` + ``sadalp`` schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (see the
    module docstring)."""

    lanes = _LANES
    max_accumulators = _MAX_ACCUMULATORS

    def __init__(self, instruction: str) -> None:
        self.instruction = instruction
        self.group, self.intrinsic, self._available = _KERNELS[instruction]

    def is_target_available(self, target: Target) -> bool:
        return self._available(target)
