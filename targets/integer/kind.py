"""The base of the integer op kinds: one class per kind, holding everything about it.

A kind (convolution, matrix product, add, ...) answers four questions, each in one method:

* ``refusal(node, graph)`` — the capability check: would this *float* node (before quantization)
  run as an integer kernel once quantized the standard way? ``None``, or the reason it would not.
  The quantize pass asks it through ``PassContext.capabilities``.
* ``plan(group, graph)`` — the legalization: the nodes that replace a matched QDQ group, every
  integer parameter computed here (numpy) and stored as node attributes and constant inputs of an
  ``edgec``-domain node, so the legal graph describes itself; raises :class:`~.qdq.Refuse`.
* ``emit(bb, node, args)`` — the Relax expression of one such node (tvm imported lazily).
* ``reference(node, args)`` — the same arithmetic in numpy (the test oracle).

A new integer op is one new subclass listed in :data:`edgec.targets.integer.kernels.KINDS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.rewrite import Op
from edgec.targets.integer.qdq import Group

__all__ = ["DOMAIN", "IntegerKind", "attr_int", "original_name"]

DOMAIN = "edgec"


def attr_int(node: gs.Node, name: str) -> int:
    return int(node.attrs[name])


def original_name(node: gs.Node) -> str:
    """The name of the node a legal node computes: its own, or, for a row band's copy of it
    (``patch-stages``), the name of the node it copies."""
    return str(node.attrs.get("patch_of", node.name))


class IntegerKind:
    """One integer op kind (see the module docstring).

    Class attributes:
        op_type: the ``edgec``-domain op of the legal graph; empty for kinds that keep the
            standard ONNX op and run it on int8 data (data movement).
        float_ops: the ONNX ops of the float graph that this kind runs as integers.
        kernel: how the lowering's report names what it built.
        data_inputs: how many leading inputs of the legal node are data (the rest are the
            constants named by ``constants``, in order).
        constants: names of the constant inputs after the data inputs.
        patterns: what a group of this kind has under its QuantizeLinear (the node bound as
            ``f``); empty means any node of ``float_ops``.
        fuses_activation: a Relu/Clip between the node and the QuantizeLinear folds into the
            kernel's clamp.
    """

    op_type: ClassVar[str] = ""
    float_ops: ClassVar[tuple[str, ...]] = ()
    kernel: ClassVar[str] = ""
    data_inputs: ClassVar[int] = 1
    constants: ClassVar[tuple[str, ...]] = ()
    patterns: ClassVar[tuple[Op, ...]] = ()
    fuses_activation: ClassVar[bool] = True

    def group_patterns(self) -> tuple[Op, ...]:
        """The patterns of the node a group of this kind has under its QuantizeLinear."""
        return self.patterns or (Op(self.float_ops, any_inputs=True, name="f"),)

    # ----- capability --------------------------------------------------------------------------
    def refusal(self, node: gs.Node, graph: EdgeGraph) -> str | None:
        """``None`` when ``node`` (float, before quantization) runs as this kind once quantized."""
        return None

    # ----- legalization ------------------------------------------------------------------------
    def plan(self, group: Group, graph: EdgeGraph) -> list[gs.Node]:
        """The nodes that replace ``group`` (they write ``group.output``); raises ``Refuse``."""
        raise NotImplementedError(f"{type(self).__name__} does not plan groups")

    def make(
        self,
        graph: EdgeGraph,
        name: str,
        replaces: str,
        data: list[gs.Tensor],
        output: gs.Variable,
        attrs: dict[str, Any],
        constants: dict[str, np.ndarray] | None = None,
    ) -> gs.Node:
        """The legal-graph node of this kind: ``data`` inputs, then one constant per name of
        ``self.constants`` (named after the node), attributes plus ``replaces`` (the float op)."""
        values = constants or {}
        if set(values) != set(self.constants):
            raise ValueError(f"{self.op_type} needs constants {self.constants}, got {sorted(values)}")
        inputs = list(data)
        for key in self.constants:
            inputs.append(graph.add_constant(f"{name}_{key}", np.asarray(values[key])))
        return gs.Node(
            self.op_type,
            name=name,
            domain=DOMAIN,
            attrs={**attrs, "replaces": replaces},
            inputs=inputs,
            outputs=[output],
        )

    def constant(self, node: gs.Node, key: str) -> np.ndarray:
        """The values of the constant input ``key`` of a legal-graph node of this kind."""
        tensor = node.inputs[self.data_inputs + self.constants.index(key)]
        return np.asarray(tensor.values)

    # ----- lowering ----------------------------------------------------------------------------
    def emit(self, bb: Any, node: gs.Node, args: list[Any]) -> Any:
        """The Relax expression of ``node`` (``args``: Relax values of its inputs)."""
        raise NotImplementedError(f"{type(self).__name__} has no Relax emission of its own")

    def reference(self, node: gs.Node, args: list[np.ndarray]) -> np.ndarray:
        """``node`` computed in numpy with the kernels' integer arithmetic."""
        raise NotImplementedError(f"{type(self).__name__} has no numpy reference")

    def replaced(self, node: gs.Node) -> list[tuple[str, str]]:
        """``(name, op)`` of the float nodes this legal node computes (one, unless it fuses two)."""
        return [(original_name(node), str(node.attrs["replaces"]))]

    def weights(self, node: gs.Node) -> str:
        """How the node's weights are stored (``int8``), empty when it has none."""
        return ""
