"""What a target runs natively, declared once by the target and read by every stage.

A pass that makes a target-dependent decision (which nodes become int8, whether a graph may
compute in float16, how many channels to keep) asks ``PassContext.capabilities`` instead of
keeping its own table; the target's legalization and lowering read the same declaration, so a
decision taken by a pass and what the target builds cannot disagree silently.

The core defines the shape of the declaration; targets fill it in (``Target.capabilities()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph


class IntegerKernels(Protocol):
    """The table of integer kernels a target lowers QDQ groups to (one entry per op kind).

    ``refusal`` answers, for a float compute node of the graph *before* quantization, whether the
    target would run it as an integer kernel when it is quantized the standard way (int8 per-tensor
    activations, int8 symmetric per-channel weights): ``None`` when it would, else the reason.
    """

    @property
    def ops(self) -> frozenset[str]:
        """ONNX op types that have an integer kernel (for some attributes and shapes)."""
        ...

    def refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        """``None`` if ``node`` lowers to an integer kernel once quantized, else why not."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What a target runs natively.

    Attributes:
        target: the target's name (for messages).
        integer_kernels: the integer kernels QDQ groups lower to; ``None`` when the target has none.
        packed_weight_bits: weight widths stored at that width in the artifact and decoded inside
            the kernel that reads them (1, 2, 4, 8 bits; 16 for float16 storage).
        fp16_arithmetic: the CPU computes natively in float16 (a graph may compute in float16).
        vector_bits: the SIMD register width the kernels are written for (0: scalar).
        int8_micro_kernel: the int8 dot-product instruction the integer convolutions and matmuls
            use (``vpdpbusd``, ``vpmaddwd``, ``sdot``, ``sadalp``, ``smlad``), ``None`` for plain
            vectorised code.
        sparse_formats: sparse weight formats its conv/matmul kernels read compressed (``bitmap``:
            a bit per weight and the non-zeros; ``nm``: N:M values and their positions).
        requantize_rounding: ``single`` or ``double`` (see ``Target.requantize_rounding``).
        legalization: the pipeline of registered passes that makes a graph lowerable.
    """

    target: str
    integer_kernels: IntegerKernels | None = None
    packed_weight_bits: frozenset[int] = frozenset()
    fp16_arithmetic: bool = False
    vector_bits: int = 0
    int8_micro_kernel: str | None = None
    sparse_formats: frozenset[str] = frozenset()
    requantize_rounding: str = "single"
    legalization: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def integer_refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        """Why ``node`` would not run as an integer kernel on this target, ``None`` if it would."""
        if self.integer_kernels is None:
            return f"target '{self.target}' has no integer kernels"
        if node.op not in self.integer_kernels.ops:
            return f"target '{self.target}' has no integer kernel for {node.op}"
        reason = self.integer_kernels.refusal(node, graph)
        return None if reason is None else f"target '{self.target}': {reason}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form recorded in the manifest."""
        kernels = self.integer_kernels
        return {
            "integer_ops": sorted(kernels.ops) if kernels is not None else [],
            "packed_weight_bits": sorted(self.packed_weight_bits),
            "fp16_arithmetic": self.fp16_arithmetic,
            "vector_bits": self.vector_bits,
            "int8_micro_kernel": self.int8_micro_kernel,
            "sparse_formats": sorted(self.sparse_formats),
            "requantize_rounding": self.requantize_rounding,
            "legalization": self.legalization,
            **dict(self.extra),
        }
