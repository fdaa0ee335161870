"""Static memory planning: place every intermediate tensor and kernel workspace in one arena.

A model compiled for a microcontroller runs its kernels in a fixed order, so every buffer has a
known lifetime ``[first, last]`` (the steps that write it first and read it last). Two buffers may
share bytes exactly when their lifetimes are disjoint. The planner here is the greedy offset
assignment of TFLite Micro's ``GreedyMemoryPlanner``: take buffers from the largest down, put
each in the tightest gap left between the buffers already placed whose lifetimes overlap it; it
also tries two other orders and keeps the smallest arena. It is compared with two references:

* the **liveness lower bound** ``max over steps of the bytes live at that step`` (no placement
  can use less, because all those bytes exist at the same time);
* the **naive plan**, every buffer its own region (``sum of sizes``).

In-place reuse is decided by the caller (see :func:`merge_in_place`): an element-wise kernel
whose input dies at that step may write its output over the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Buffer",
    "MemoryPlan",
    "align_up",
    "liveness_lower_bound",
    "merge_in_place",
    "naive_bytes",
    "plan_greedy_by_size",
]


def align_up(value: int, alignment: int) -> int:
    """``value`` rounded up to a multiple of ``alignment`` (a power of two or any positive int)."""
    return -(-value // alignment) * alignment


@dataclass(frozen=True)
class Buffer:
    """A buffer to place: ``size`` bytes live from step ``first`` to step ``last`` (inclusive)."""

    name: str
    size: int
    first: int
    last: int

    def overlaps(self, other: Buffer) -> bool:
        """Whether the two lifetimes share a step (then the bytes must not overlap)."""
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    """Offsets of every buffer in the arena and the arena size (both multiples of ``alignment``)."""

    offsets: dict[str, int]
    arena_bytes: int
    alignment: int

    def check(self, buffers: Iterable[Buffer]) -> None:
        """Raises ``AssertionError`` if two buffers with overlapping lifetimes overlap in bytes.

        A cheap O(n^2) self-check, run on every plan: a wrong plan corrupts activations silently.
        """
        placed = [(b, self.offsets[b.name]) for b in buffers]
        for i, (a, offset_a) in enumerate(placed):
            assert offset_a % self.alignment == 0, f"{a.name} is misaligned"
            assert offset_a + a.size <= self.arena_bytes, f"{a.name} ends past the arena"
            for b, offset_b in placed[i + 1 :]:
                if a.overlaps(b) and a.size and b.size:
                    disjoint = offset_a + a.size <= offset_b or offset_b + b.size <= offset_a
                    assert disjoint, f"{a.name} and {b.name} are live together but overlap"


# Orders in which the greedy placement takes buffers. By size is TFLite Micro's choice; the
# others win on some graphs (on a MobileNet-style block, by first use reaches the liveness bound
# where by size needs 17 % more), and trying all of them costs O(n^2) each.
_ORDERS: dict[str, Callable[[Buffer], tuple]] = {
    "size": lambda b: (-b.size, b.first, b.name),
    "first_use": lambda b: (b.first, -b.size, b.name),
    "size_x_lifetime": lambda b: (-b.size * (b.last - b.first + 1), b.first, b.name),
}


def _place(order: Sequence[Buffer], alignment: int) -> tuple[dict[str, int], int]:
    """Places buffers in ``order``, each in the tightest gap between live neighbours."""
    offsets: dict[str, int] = {}
    placed: list[tuple[int, int, Buffer]] = []  # (offset, aligned size, buffer)
    arena = 0
    for buffer in order:
        size = align_up(buffer.size, alignment)
        if size == 0:
            offsets[buffer.name] = 0
            continue
        neighbours = sorted((o, s) for o, s, other in placed if other.overlaps(buffer))
        best_offset, best_gap = None, None
        cursor = 0
        for offset, other_size in neighbours:
            gap = offset - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best_offset, best_gap = cursor, gap
            cursor = max(cursor, offset + other_size)
        if best_offset is None:
            best_offset = cursor  # no gap fits: above every live neighbour
        offsets[buffer.name] = best_offset
        placed.append((best_offset, size, buffer))
        arena = max(arena, best_offset + size)
    return offsets, arena


def plan_greedy_by_size(buffers: Sequence[Buffer], alignment: int = 16) -> MemoryPlan:
    """Greedy placement with offset reuse: best-fit gap among the buffers live at the same time.

    Buffers are taken largest first (TFLite Micro's ``GreedyMemoryPlanner``), and also in first-use
    order and by ``size x lifetime``; the smallest arena wins (ties: the earlier order above).

    Args:
        buffers: The buffers; names must be unique. Zero-sized buffers get offset 0.
        alignment: Every offset (and the arena size) is a multiple of this.

    Returns:
        The plan; it is checked with :meth:`MemoryPlan.check` before it is returned.
    """
    best: tuple[dict[str, int], int] | None = None
    for key in _ORDERS.values():
        offsets, arena = _place(sorted(buffers, key=key), alignment)
        if best is None or arena < best[1]:
            best = (offsets, arena)
    assert best is not None
    plan = MemoryPlan(best[0], best[1], alignment)
    plan.check(buffers)
    return plan


def liveness_lower_bound(buffers: Sequence[Buffer], alignment: int = 1) -> int:
    """``max over steps of the (aligned) bytes live at that step``: no arena can be smaller."""
    if not buffers:
        return 0
    steps = max(b.last for b in buffers) + 1
    live = [0] * steps
    for buffer in buffers:
        for step in range(buffer.first, buffer.last + 1):
            live[step] += align_up(buffer.size, alignment)
    return max(live)


def naive_bytes(buffers: Sequence[Buffer], alignment: int = 1) -> int:
    """Every buffer its own region: the arena without any reuse."""
    return sum(align_up(b.size, alignment) for b in buffers)


def merge_in_place(buffers: Sequence[Buffer], pairs: Iterable[tuple[str, str]]) -> tuple[list[Buffer], dict]:
    """Fuse ``(input, output)`` pairs whose output may overwrite its input.

    The caller vouches that each pair is safe: the kernel is element-wise (output element ``i``
    depends only on input element ``i``), both have the same size, and the input's last use is
    the step that writes the output. Merged buffers become one buffer spanning both lifetimes.

    Args:
        buffers: The buffers before merging.
        pairs: ``(input name, output name)`` pairs, in step order.

    Returns:
        The merged buffers and a map from every original name to the name of the buffer that
        holds it (itself when it was not merged).
    """
    by_name = {b.name: b for b in buffers}
    owner = {b.name: b.name for b in buffers}
    for source, target in pairs:
        root = owner[source]
        merged = by_name[root]
        produced = by_name.pop(target)
        if produced.size != merged.size or produced.first != merged.last:
            raise ValueError(f"{target} cannot be written over {source}: sizes or lifetimes differ")
        by_name[root] = Buffer(root, merged.size, merged.first, max(merged.last, produced.last))
        for name, holder in owner.items():
            if holder == target:
                owner[name] = root
    return list(by_name.values()), owner
