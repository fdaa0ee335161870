"""Channel dependency groups: which channels of which tensors must be removed together.

Every tensor whose channels a pruning could remove gets a *space*: its channel axis, its channel
count, and ``block``, the elements one channel occupies along that axis (1, or H*W after a Flatten).
The op rules (:mod:`edgec.passes.pruning.rules`) link channels of different spaces that must go
together (a residual Add, a Concat's offsets, a depthwise Conv's input and output). Linked channels
form *units*, the smallest removable thing; a unit touching a fixed space (a model input or output,
an op the analysis cannot see through) is blocked, and the reason is kept. Some spaces are
*balanced*: their equal ranges of channels (the groups of a grouped Conv, the parts of a channel
shuffle) must each lose as many channels, whichever ones.

A *group* is the set of units that share an origin, a layer whose weights create the channels
(Conv, Gemm, MatMul ...), or a balanced space: pruning a group changes those layers and every
member that reads, scales or forwards the group's channels. Channels concatenated from two layers
stay two groups (the concatenation's consumer is a member of both; Torch-Pruning#481 merged them).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, static_shape
from edgec.pm import AnalysisManager, register_analysis

# What a node does with a space's channels (``Use.role``).
PRODUCES = "produces"  # output channels of a layer with weights: its weight rows go with them
CONSUMES = "consumes"  # input channels of a layer with weights: its weight columns go
NORMALIZES = "normalizes"  # per-channel statistics (BatchNormalization, InstanceNormalization)
SCALES = "scales"  # a per-channel constant of an element-wise op
FILTERS = "filters"  # a depthwise Conv: its filter goes with its one channel
COUNTS = "counts"  # a shape, split size or slice bound that counts channels
FORWARDS = "forwards"  # passes channels through unchanged (activations, pooling, Concat ...)


@dataclass(frozen=True)
class Space:
    """A tensor's channel axis: ``channels`` channels of ``block`` consecutive elements along
    ``axis``, numbered ``start ... start + channels - 1`` among all spaces; ``origin`` when a layer's
    weights create the channels (they are not derived from an input's)."""

    tensor: str
    axis: int
    channels: int
    block: int
    start: int
    origin: bool

    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.channels)


@dataclass(frozen=True)
class Use:
    """A node that reads, writes or changes with the channels of ``tensor`` (``role``)."""

    node: str
    op: str
    tensor: str
    role: str


class Linker:
    """What the op rules call to declare spaces, links, ties, uses and fixed spaces."""

    def __init__(self, graph: EdgeGraph) -> None:
        self.graph = graph
        self.spaces: dict[str, Space] = {}
        self.fixed: dict[str, list[str]] = defaultdict(list)
        self.uses: list[Use] = []
        self.balances: list[tuple[str, int]] = []
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self._size = 0

    # ----- spaces ------------------------------------------------------------------------------
    def space(self, tensor: gs.Tensor) -> Space | None:
        return self.spaces.get(tensor.name)

    def create(
        self, tensor: gs.Tensor, axis: int, channels: int, block: int = 1, origin: bool = True
    ) -> Space:
        """A new space for ``tensor`` (an origin unless derived from inputs by the caller's links)."""
        space = Space(tensor.name, axis, channels, block, self._size, origin)
        self._size += channels
        self.spaces[tensor.name] = space
        return space

    def derive(
        self, node: gs.Node, tensor: gs.Tensor, axis: int, like: Space, channels: int | None = None
    ) -> Space:
        """A space for an output computed from ``like``'s channels (linked by the caller unless the
        channel counts agree and ``channels`` is not given: then channel ``i`` to channel ``i``)."""
        count = like.channels if channels is None else channels
        space = self.create(tensor, axis, count, like.block, origin=False)
        if channels is None:
            self.same(like, space)
        return space

    def operand(self, node: gs.Node, tensor: gs.Tensor, axis: int, block: int = 1) -> Space:
        """A fixed space for an input without one that must follow other channels: a model input,
        a constant, or a tensor whose producer the analysis cannot see through."""
        assert self.space(tensor) is None, f"'{tensor.name}' already has a channel space"
        shape = static_shape(tensor)
        channels = shape[axis] // block if shape is not None else 0
        space = self.create(tensor, axis, channels, block, origin=True)
        if isinstance(tensor, gs.Constant):
            self.fix(
                space, f"constant '{tensor.name}' is combined with the channels of {node.op} '{node.name}'"
            )
        elif not tensor.inputs:
            self.fix(space, f"model input '{tensor.name}' has a fixed shape")
        else:
            producer = tensor.inputs[0]
            self.fix(space, f"{producer.op} '{producer.name}' does not map its channels to its inputs'")
        return space

    # ----- links -------------------------------------------------------------------------------
    def link(self, a: Space, a_channels: np.ndarray, b: Space, b_channels: np.ndarray) -> None:
        """Channel ``a_channels[i]`` of ``a`` goes with channel ``b_channels[i]`` of ``b``."""
        for space, channels in ((a, a_channels), (b, b_channels)):
            if len(channels) and (np.min(channels) < 0 or np.max(channels) >= space.channels):
                raise ValueError(f"channel link outside the {space.channels} channels of '{space.tensor}'")
        self._pairs.append((a.start + np.asarray(a_channels), b.start + np.asarray(b_channels)))

    def same(self, a: Space, b: Space) -> None:
        """Channel ``i`` of ``a`` goes with channel ``i`` of ``b``."""
        if a.channels != b.channels:
            raise ValueError(f"cannot link {a.tensor} ({a.channels}) with {b.tensor} ({b.channels})")
        self.link(a, np.arange(a.channels), b, np.arange(b.channels))

    def balance(self, space: Space, parts: int) -> None:
        """The space's ``parts`` equal ranges of channels must each lose as many channels (the
        groups of a grouped Conv, the parts of a channel shuffle); any channels of each part."""
        if parts > 1:
            self.balances.append((space.tensor, parts))

    def fix(self, space: Space, reason: str) -> None:
        """The space's channels must all stay; ``reason`` says why."""
        if reason not in self.fixed[space.tensor]:
            self.fixed[space.tensor].append(reason)

    def use(self, node: gs.Node, space: Space, role: str) -> None:
        self.uses.append(Use(node.name, node.op, space.tensor, role))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (
            np.concatenate([a for a, _ in self._pairs]).astype(np.int64),
            np.concatenate([b for _, b in self._pairs]).astype(np.int64),
        )

    @property
    def size(self) -> int:
        return self._size


def components(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of ``size`` items under the pairs ``(a[i], b[i])``: the smallest item
    of each component, per item (hooking of roots and pointer jumping, vectorised)."""
    parent = np.arange(size)
    if size == 0 or len(a) == 0:
        return parent
    while True:
        root_a, root_b = parent[a], parent[b]
        differ = root_a != root_b
        if not differ.any():
            return parent
        low = np.minimum(root_a[differ], root_b[differ])
        high = np.maximum(root_a[differ], root_b[differ])
        np.minimum.at(parent, high, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


@dataclass
class Group:
    """Units that share an origin layer; see the module docstring.

    Attributes:
        index: the group's number (in the order of the first origin in the graph).
        units: the units of the group (indices into ``ChannelGroups.unit_fixed``).
        origins: the layers whose weights create the channels.
        members: ``(use, channels)``: every node that changes with the group, and how many of the
            channels it reads belong to this group.
        reasons: why blocked units must stay (empty when every unit can go).
        blocked: per unit of ``units``, whether it must stay.
        channels_per_unit: channels of the origin each unit holds (more than one where a channel
            shuffle ties channels together).
    """

    index: int
    units: np.ndarray
    origins: list[str]
    members: list[tuple[Use, int]]
    reasons: list[str]
    blocked: np.ndarray
    channels_per_unit: int = 1

    @property
    def prunable(self) -> int:
        return int((~self.blocked).sum())

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.index,
            "units": len(self.units),
            "prunable": self.prunable,
            "origins": self.origins,
            "members": [
                {"node": use.node, "op": use.op, "tensor": use.tensor, "role": use.role, "channels": count}
                for use, count in self.members
            ],
            "left_alone": self.reasons,
        }


@dataclass
class ChannelGroups:
    """The ``channel-groups`` analysis of a graph.

    Attributes:
        spaces: every tensor's channel space, by tensor name.
        unit_of: the unit of every channel (indexed by ``Space.start + channel``).
        unit_fixed: per unit, whether it touches a fixed space.
        fixed: why spaces are fixed, by tensor name.
        uses: every node use of a space.
        balances: ``(tensor, parts)`` of the balanced spaces.
        groups: the groups, in graph order.
    """

    spaces: dict[str, Space]
    unit_of: np.ndarray
    unit_fixed: np.ndarray
    fixed: dict[str, list[str]]
    uses: list[Use]
    balances: list[tuple[str, int]]
    groups: list[Group] = field(default_factory=list)

    @property
    def unit_count(self) -> int:
        return len(self.unit_fixed)

    def units(self, tensor: str) -> np.ndarray:
        """The unit of every channel of ``tensor``."""
        space = self.spaces[tensor]
        return self.unit_of[space.start : space.start + space.channels]

    def removed_channels(self, tensor: str, removed: np.ndarray) -> np.ndarray:
        """The channels of ``tensor`` whose unit is marked in the boolean array ``removed``."""
        return np.flatnonzero(removed[self.units(tensor)])

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": [group.as_dict() for group in self.groups],
            "units": self.unit_count,
            "prunable": int(sum(g.prunable for g in self.groups)),
        }


def build_groups(linker: Linker) -> ChannelGroups:
    """Units and groups from what the rules declared."""
    a, b = linker.pairs()
    roots = components(linker.size, a, b)
    _, unit_of = np.unique(roots, return_inverse=True)
    unit_count = int(unit_of.max()) + 1 if len(unit_of) else 0
    unit_fixed = np.zeros(unit_count, bool)
    for tensor in linker.fixed:
        space = linker.spaces[tensor]
        unit_fixed[unit_of[space.start : space.start + space.channels]] = True
    # Units that share an origin or a balanced space form a group.
    group_a, group_b = [], []
    balanced = {tensor for tensor, _ in linker.balances}
    for space in linker.spaces.values():
        if (space.origin or space.tensor in balanced) and space.channels > 1:
            units = unit_of[space.start : space.start + space.channels]
            group_a.append(np.full(len(units) - 1, units[0]))
            group_b.append(units[1:])
    group_root = components(
        unit_count,
        np.concatenate(group_a) if group_a else np.zeros(0, np.int64),
        np.concatenate(group_b) if group_b else np.zeros(0, np.int64),
    )
    result = ChannelGroups(
        linker.spaces, unit_of, unit_fixed, dict(linker.fixed), linker.uses, sorted(set(linker.balances))
    )
    result.groups = _groups(result, group_root)
    return result


def _groups(result: ChannelGroups, group_root: np.ndarray) -> list[Group]:
    spaces = sorted(result.spaces.values(), key=lambda s: s.start)
    # Groups numbered by their first channel: the order of their first origin in the graph.
    order: dict[int, int] = {}
    for space in spaces:
        for root in group_root[result.units(space.tensor)]:
            order.setdefault(int(root), len(order))
    units_by_group: dict[int, list[int]] = defaultdict(list)
    for unit, root in enumerate(group_root):
        units_by_group[order[int(root)]].append(unit)
    space_groups = {s.tensor: group_root[result.units(s.tensor)] for s in spaces}
    origins: dict[int, list[str]] = defaultdict(list)
    members: dict[int, list[tuple[Use, int]]] = defaultdict(list)
    for use in result.uses:
        roots, counts = np.unique(space_groups[use.tensor], return_counts=True)
        for root, count in zip(roots, counts, strict=True):
            index = order[int(root)]
            members[index].append((use, int(count)))
            if use.role == PRODUCES and result.spaces[use.tensor].origin and use.node not in origins[index]:
                origins[index].append(use.node)
    per_unit: dict[int, int] = {}
    for space in spaces:
        if space.origin and space.channels and space.tensor not in result.fixed:
            units = result.units(space.tensor)
            index = order[int(group_root[units[0]])]
            share = space.channels // len(np.unique(units))
            per_unit[index] = min(per_unit.get(index, share), share)
    reasons: dict[int, list[str]] = defaultdict(list)
    for tensor, why in result.fixed.items():
        for root in np.unique(space_groups[tensor]):
            for reason in why:
                if reason not in reasons[order[int(root)]]:
                    reasons[order[int(root)]].append(reason)
    groups = []
    for index in range(len(order)):
        units = np.asarray(units_by_group[index], dtype=np.int64)
        group = Group(index, units, origins[index], members[index], reasons[index], result.unit_fixed[units])
        group.channels_per_unit = per_unit.get(index, 1)
        groups.append(group)
    return groups


@register_analysis(
    "channel-groups", requires=("shapes",), description="channels that channel pruning removes together"
)
def channel_groups(graph: EdgeGraph, analyses: AnalysisManager) -> ChannelGroups:
    from edgec.passes.pruning.rules import link_graph

    return build_groups(link_graph(graph))
