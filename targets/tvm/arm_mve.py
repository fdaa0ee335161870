"""int8 conv2d/dense kernels with Helium (MVE) on Cortex-M55: ``VMLADAVA.S8``, 16 MACs per instruction.

Measured on the digits CNN under qemu (``benchmarks/mcu_cycles.py --targets cortex-m55 --kernels``):
with TVM's plain CPU rules LLVM vectorizes the int8 convolutions over output channels, four int32
lanes at a time (``VMOVLB`` widening, ``VMUL.I32``, ``VADD.I32``, accumulators spilled), 1.5-3.3
instructions per MAC, no better than the M4's ``SMLAD`` kernels. Helium's
``VMLADAVA.S8 acc, q_x, q_w`` adds all 16 products of two int8 vectors to a scalar accumulator:
the input-channel-innermost micro-kernel of :class:`.arm_dsp.Int8DspConv`, with 16 reduction steps
per instruction instead of 4::

    x = vldrb q[k : k+16]     w = vldrb q[k : k+16]    acc = VMLADAVA.S8(acc, x, w)

written as the TIR tensor intrinsic :data:`DOT16_INTRIN` (``llvm.arm.mve.vmldava``, signed, no
exchange, accumulating). The products are exact int16 and the sum int32, so the kernels stay
bit-exact with the plain ones. :class:`Int8MveConv` is :class:`.arm_dsp.Int8DspConv`'s schedule
(2 output columns x 2 output channels, weights stored ``HWOI`` / ``W^T``) with this intrinsic, for
reductions that are a multiple of 16 input channels; what it declines falls to the SMLAD rules
(the M55 has the DSP extension too), then to the plain ones. On the digits CNN the layers it takes
run 0.27-0.30 instructions per MAC (the requantization epilogue is most of that), the whole model
172 k instructions against 1.28 M before and 765 k on the M4.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import s_tir
from tvm.script import tirx as T
from tvm.target import Target

from .arm_dsp import HELIUM_CORES, Int8DspConv, int8_dot_intrinsic
from .int8_rules import kernel_layouts
from .int8_rules import relayout_constant_weights as _relayout

__all__ = [
    "DOT16_INTRIN",
    "MVE_WEIGHT_PERMUTATION_ATTR",
    "Int8MveConv",
    "has_mve",
    "mve_weight_permutation",
    "relayout_constant_weights",
]

DOT16_INTRIN = "edgec_arm_mve_dot16_i8i8i32"
MVE_WEIGHT_PERMUTATION_ATTR = "edgec.arm_mve_weight_permutation"


def has_mve(target: Target | dict) -> bool:
    """Whether ``target`` is an Armv8.1-M core with Helium's integer instructions (``VMLADAVA``)."""
    attrs = target if isinstance(target, dict) else target.attrs
    if not str(attrs.get("mtriple", "") or "").startswith("thumbv8.1m.main"):
        return False
    features = list(attrs.get("mattr", None) or [])
    return str(attrs.get("mcpu", "")) in HELIUM_CORES or any(f.startswith("+mve") for f in features)


def _vmladava(a: Any, b: Any, acc: Any) -> Any:
    """``acc + Σ a[k]·b[k]`` over 16 int8 lanes: ``vmldava(unsigned=0, subtract=0, exchange=0, acc,
    a, b)``, which is ``VMLADAVA.S8``."""
    zero = T.int32(0)
    return T.call_llvm_pure_intrin("int32", "llvm.arm.mve.vmldava.v16i8", zero, zero, zero, acc, a, b)


s_tir.TensorIntrin.register(DOT16_INTRIN, *int8_dot_intrinsic(16, _vmladava), override=True)


class Int8MveConv(Int8DspConv):
    """:class:`.arm_dsp.Int8DspConv` with :data:`DOT16_INTRIN` (see the module docstring)."""

    intrinsic = DOT16_INTRIN
    lanes = 16
    weight_attr = MVE_WEIGHT_PERMUTATION_ATTR

    def is_target_available(self, target: Target) -> bool:
        return has_mve(target)


def mve_weight_permutation(func: Any) -> dict[int, list[int]]:
    """``{parameter index: axis permutation}`` of a kernel :class:`Int8MveConv` scheduled, else ``{}``."""
    return kernel_layouts(func, MVE_WEIGHT_PERMUTATION_ATTR)


def relayout_constant_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Transposes the constant weights of calls to functions :class:`Int8MveConv` scheduled."""
    return _relayout(mod, MVE_WEIGHT_PERMUTATION_ATTR, np.transpose, "VMLADAVA")
