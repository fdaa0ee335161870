"""int8 conv2d/matmul kernels with AArch64 NEON dot products: ``sdot`` (ARMv8.2-A dot product:
Cortex-A55, A76) and ``smull`` + ``sadalp`` (every ARMv8.0-A core: Cortex-A53, A72).

LLVM vectorizes edgec's int8 x int8 -> int32 reduction for AArch64 through the float rules' int32
lanes: each input byte is broadcast and sign-extended on its own (``dup``, ``uxtl``, ``shl``,
``sshr``, ``xtn``) before one ``smlal`` of four multiply-accumulates, about 2 instructions per
MAC where the float build's ``fmla`` does four MACs in one: the int8 squeezenet executed 2.9x the
instructions of the float one under qemu-aarch64. Three micro-kernels replace that inner step
(:class:`.int8_dot.Int8DotProductConv` with these intrinsics; layout, tiling and fallbacks are
shared with the x86 rules)::

    sdot-lane (4 x 16): x16 = *(int8x16 *)&x[rc]                          (16 input bytes, one load)
                        acc = sdot(acc, W'[rc/16, co/4, q], x16.4b[q])    q = 0..3: 64 MACs, 4 instr.
    sdot  (4 lanes x 4): x4 = dup(*(int32 *)&x[rc])                       (4 input bytes, broadcast)
                         acc = sdot(acc, W'[rc/4, co/4], x4)              16 MACs, one instruction
    sadalp (4 lanes x 2): x2 = dup(*(int16 *)&x[rc])                      (2 input bytes, broadcast)
                          acc = sadalp(acc, smull(W'[rc/2, co/4], x2))    8 MACs, two instructions

The lane-indexed form reads each column's input once per 16 channels with a plain load (``ld1r``,
the broadcast, takes no immediate offset: each one cost an address computation too), which took
the int8 squeezenet on cortex-a55 from 97 M to 68 M instructions.

``sdot`` adds four int8 products into each int32 lane, exact. ``smull`` multiplies 8 int8 pairs
into int16 (|product| <= 128² = 2^14, exact) and ``sadalp`` adds adjacent int16 pairs into the
int32 accumulator (no int16 sum, so nothing wraps before the int32 accumulation, which wraps
exactly as the plain kernel's): both stay bit-exact with the plain kernels and the numpy
reference. The weights are stored group-interleaved for 4 output channels per vector
(:func:`.int8_dot.pair_interleave` with ``[4, 4, 4]``, ``[4, 4]`` or ``[2, 4]``).
:class:`Int8NeonConv` ``("sdot-lane")`` then ``("sdot")`` run on targets whose CPU has the
dot-product extension (:func:`has_dotprod`), for reductions of 16k and 4k input channels; what
they decline and every kernel of a core without it gets ``("sadalp")`` (reductions of even
length). ``pad-channels`` pads the input channels of a first layer on an RGB image to the step;
without it, such a layer keeps the plain rules. ``edgec compile --no-micro-kernels`` switches
them all off (for comparisons).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import tirx
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


def _quad_sdot(A, B, C):
    # 16 input bytes in one register; sdot by element q multiplies the 4 bytes of lane q.
    x = T.reinterpret("int32x4", A.vload([0], "int8x16"))
    acc = C.vload([0], "int32x4")
    for q in range(4):
        lane = T.reinterpret("int8x16", tirx.Shuffle([x], [q] * 4))
        acc = T.call_llvm_pure_intrin(
            "int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, B.vload([q, 0, 0], "int8x16"), lane
        )
    return acc


QUAD_SDOT_INTRIN = register_dot_product(
    "edgec_aarch64_sdot_lane_4x16_i8i8i32", _LANES, 4, _quad_sdot, quads=4
)
SADALP_INTRIN = register_dot_product("edgec_aarch64_smull_sadalp_4x2_i8i8i32", _LANES, 2, _sadalp)


# kernel -> (instruction, input channels per instruction, instructions per tensorized step,
# accumulators per tile, tensor intrinsic, whether a target has it). sdot-lane keeps 4 weight
# vectors per channel vector live: 16 accumulators (squeezenet on cortex-a55: 67.6 M instructions
# with 14 or 16, 69.4 M with 20, 73.5 M with 24, 73.9 M with 12).
_KERNELS: dict[str, tuple[str, int, int, int, str, Callable[[Target | dict], bool]]] = {
    "sdot-lane": ("sdot", 4, 4, 16, QUAD_SDOT_INTRIN, has_dotprod),
    "sdot": ("sdot", 4, 1, _MAX_ACCUMULATORS, SDOT_INTRIN, has_dotprod),
    "sadalp": ("sadalp", 2, 1, _MAX_ACCUMULATORS, SADALP_INTRIN, is_aarch64),
}


class Int8NeonConv(Int8DotProductConv):
    """``sdot`` or ``smull`` + ``sadalp`` schedule for int8 NHWC/HWIO conv2d and ``x @ W`` (see the
    module docstring)."""

    lanes = _LANES

    def __init__(self, kernel: str) -> None:
        self.instruction, self.group, self.quads, self.max_accumulators, self.intrinsic, self._available = (
            _KERNELS[kernel]
        )

    def is_target_available(self, target: Target) -> bool:
        return self._available(target)
