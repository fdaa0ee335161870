"""The contract of a channel rule: how one kind of op couples channels (``link``) and how a node of
that kind is rewritten when channels of its inputs or outputs are removed (``cut``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from edgec.ir import EdgeGraph, static_shape
from edgec.passes.pruning.groups import Linker, Space


@dataclass(frozen=True)
class Cut:
    """The channels removed from one space (sorted), and the elements they occupy on its axis."""

    space: Space
    channels: np.ndarray

    @property
    def elements(self) -> np.ndarray:
        """Indices along the axis: ``block`` consecutive elements per removed channel."""
        block = self.space.block
        return (self.channels[:, None] * block + np.arange(block)[None, :]).ravel()

    @property
    def kept(self) -> int:
        return self.space.channels - len(self.channels)

    def below(self, element: int) -> int:
        """How many removed elements lie before ``element`` on the axis."""
        return int((self.elements < element).sum())


class Cuts:
    """The cut of every tensor that loses channels, by tensor name."""

    def __init__(self, cuts: dict[str, Cut]) -> None:
        self._cuts = cuts

    def get(self, tensor: gs.Tensor) -> Cut | None:
        return self._cuts.get(tensor.name)

    def touches(self, node: gs.Node) -> bool:
        return any(t.name in self._cuts for t in (*node.inputs, *node.outputs))


class ChannelRule:
    """How the ops in ``ops`` use channels.

    ``link`` declares, through the linker, the spaces of the node's outputs, which channels go
    together, what the node does with each space (a ``Use``) and which spaces must stay (with the
    reason). ``cut`` rewrites the node for the removed channels of its inputs and outputs (new
    weight slices, attributes, shape constants); the default does nothing, for ops whose output
    shape follows their inputs. ``rows`` gives a producing layer's weights per output channel.
    """

    ops: ClassVar[tuple[str, ...]] = ()

    def link(self, node: gs.Node, linker: Linker) -> None:
        raise NotImplementedError

    def cut(self, node: gs.Node, cuts: Cuts, graph: EdgeGraph) -> None:
        return None

    def rows(self, node: gs.Node) -> np.ndarray | None:
        """``[output channels, weights per channel]`` for a layer that produces channels."""
        return None


def spaced(node: gs.Node, linker: Linker) -> list[tuple[int, gs.Tensor, Space]]:
    """``(input index, tensor, space)`` of the node's inputs that have a channel space."""
    found = []
    for index, tensor in enumerate(node.inputs):
        space = linker.space(tensor) if tensor.name else None
        if space is not None:
            found.append((index, tensor, space))
    return found


def fix_inputs(node: gs.Node, linker: Linker, reason: str) -> None:
    """Every input space of ``node`` must stay, for ``reason`` (prefixed with the node)."""
    for _, _, space in spaced(node, linker):
        linker.fix(space, f"{node.op} '{node.name}' {reason}")


def constant(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a constant input, ``None`` for a computed or missing one."""
    if not isinstance(tensor, gs.Constant):
        return None
    # Loaded without caching: ``Constant.values`` replaces a lazy initializer by its array, which
    # a functional pass must not do to the graph it was given (the manager checks its fingerprint).
    values = tensor._values
    return values.load() if isinstance(values, LazyValues) else np.asarray(values)


def scalar_or_missing(tensor: gs.Tensor) -> bool:
    """An optional input that is absent, or a constant with at most one value."""
    if not tensor.name:
        return True
    values = constant(tensor)
    return values is not None and values.size <= 1


def rank(tensor: gs.Tensor) -> int | None:
    shape = static_shape(tensor)
    return None if shape is None else len(shape)


def replace_input(node: gs.Node, index: int, values: np.ndarray, graph: EdgeGraph) -> None:
    """Gives input ``index`` of ``node`` new constant values (a new tensor: the old one may be
    shared with another node, and constants are never changed in place)."""
    old = node.inputs[index]
    node.inputs[index] = graph.add_constant(old.name or f"{node.name}_input", values)


def delete_elements(node: gs.Node, index: int, elements: np.ndarray, axis: int, graph: EdgeGraph) -> None:
    """Removes ``elements`` along ``axis`` from constant input ``index``."""
    if len(elements) == 0:
        return
    values = constant(node.inputs[index])
    assert values is not None, f"{node.op} '{node.name}': input {index} is not constant"
    replace_input(node, index, np.delete(values, elements, axis=axis), graph)
