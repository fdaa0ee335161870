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

In-place reuse is an :class:`Overlap` the caller vouches for (an element-wise kernel whose input
dies at that step may write its output over the input; a kernel that streams rows, over its input
from a margin ahead of it); the placement honours it when the offset it implies is free, and
reports which it honoured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Buffer",
    "MemoryPlan",
    "Overlap",
    "align_up",
    "liveness_lower_bound",
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
class Overlap:
    """``output`` may be written over ``input`` (whose last step is the one that writes
    ``output``), its bytes starting ``margin`` bytes before the input's (0: exactly over it)."""

    input: str
    output: str
    margin: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """Offsets of every buffer in the arena and the arena size (both multiples of ``alignment``),
    and the overlaps the placement honoured."""

    offsets: dict[str, int]
    arena_bytes: int
    alignment: int
    honoured: tuple[Overlap, ...] = ()

    def check(self, buffers: Iterable[Buffer]) -> None:
        """Raises ``AssertionError`` if two buffers with overlapping lifetimes overlap in bytes,
        other than as an honoured :class:`Overlap` says.

        A cheap O(n^2) self-check, run on every plan: a wrong plan corrupts activations silently.
        """
        allowed = {frozenset((o.input, o.output)) for o in self.honoured}
        for overlap in self.honoured:
            assert self.offsets[overlap.output] == self.offsets[overlap.input] - overlap.margin
        placed = [(b, self.offsets[b.name]) for b in buffers]
        for i, (a, offset_a) in enumerate(placed):
            assert offset_a % self.alignment == 0, f"{a.name} is misaligned"
            assert offset_a + a.size <= self.arena_bytes, f"{a.name} ends past the arena"
            for b, offset_b in placed[i + 1 :]:
                if a.overlaps(b) and a.size and b.size and frozenset((a.name, b.name)) not in allowed:
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


def _place(
    order: Sequence[Buffer], alignment: int, overlaps: Sequence[Overlap]
) -> tuple[dict[str, int], int, tuple[Overlap, ...]]:
    """Places buffers in ``order``, each at the offset an overlap with a placed partner implies
    when it is free, else in the tightest gap between live neighbours."""
    offsets: dict[str, int] = {}
    placed: list[tuple[int, int, Buffer]] = []  # (offset, aligned size, buffer)
    partners: dict[str, list[tuple[str, int, Overlap]]] = {}
    for overlap in overlaps:  # output = input - margin, input = output + margin
        partners.setdefault(overlap.output, []).append((overlap.input, -overlap.margin, overlap))
        partners.setdefault(overlap.input, []).append((overlap.output, overlap.margin, overlap))
    honoured: list[Overlap] = []
    arena = 0
    for buffer in order:
        size = align_up(buffer.size, alignment)
        if size == 0:
            offsets[buffer.name] = 0
            continue
        neighbours = sorted(
            ((o, s, other) for o, s, other in placed if other.overlaps(buffer)), key=lambda n: (n[0], n[1])
        )
        chosen = None
        for other, delta, overlap in partners.get(buffer.name, ()):
            start = offsets[other] + delta if other in offsets else -1
            if start >= 0 and all(
                start + size <= o or o + s <= start for o, s, b in neighbours if b.name != other
            ):
                chosen = start
                honoured.append(overlap)
                break
        if chosen is None:
            # An input whose output is still to be placed keeps its margin free below it.
            lead = max(
                (d for other, d, _ in partners.get(buffer.name, ()) if d > 0 and other not in offsets),
                default=0,
            )
            best_gap = None
            cursor = 0
            for offset, other_size, _ in neighbours:
                gap = offset - cursor
                if gap >= size + lead and (best_gap is None or gap < best_gap):
                    chosen, best_gap = cursor + lead, gap
                cursor = max(cursor, offset + other_size)
            if chosen is None:
                chosen = cursor + lead  # no gap fits: above every live neighbour
        offsets[buffer.name] = chosen
        placed.append((chosen, size, buffer))
        arena = max(arena, chosen + size)
    return offsets, arena, tuple(honoured)


def plan_greedy_by_size(
    buffers: Sequence[Buffer], alignment: int = 16, overlaps: Sequence[Overlap] = ()
) -> MemoryPlan:
    """Greedy placement with offset reuse: best-fit gap among the buffers live at the same time.

    Buffers are taken largest first (TFLite Micro's ``GreedyMemoryPlanner``), and also in first-use
    order and by ``size x lifetime``; the smallest arena wins (ties: the earlier order above). A
    buffer with an :class:`Overlap` partner already placed goes where the overlap puts it when
    that is free of every other live buffer; each order is also tried without the overlaps.

    Args:
        buffers: The buffers; names must be unique. Zero-sized buffers get offset 0.
        alignment: Every offset (and the arena size) is a multiple of this; overlap margins must be.
        overlaps: In-place opportunities the caller vouches for.

    Returns:
        The plan; it is checked with :meth:`MemoryPlan.check` before it is returned.
    """
    best: tuple[dict[str, int], int, tuple[Overlap, ...]] | None = None
    # Honouring overlaps can also steer a greedy placement into a worse arena (a buffer parked at
    # its partner's offset blocks a gap a larger one needed): each order runs with and without.
    for key in _ORDERS.values():
        for preferred in (overlaps, ()) if overlaps else ((),):
            placed = _place(sorted(buffers, key=key), alignment, preferred)
            if best is None or placed[1] < best[1]:
                best = placed
    assert best is not None
    plan = MemoryPlan(best[0], best[1], alignment, best[2])
    plan.check(buffers)
    return plan


def liveness_lower_bound(
    buffers: Sequence[Buffer], alignment: int = 1, overlaps: Sequence[Overlap] = ()
) -> int:
    """``max over steps of the (aligned) bytes live at that step``: no arena can be smaller; each
    overlap counts the union of its two buffers at the step they share."""
    if not buffers:
        return 0
    steps = max(b.last for b in buffers) + 1
    live = [0] * steps
    for buffer in buffers:
        for step in range(buffer.first, buffer.last + 1):
            live[step] += align_up(buffer.size, alignment)
    sized = {b.name: b for b in buffers}
    for overlap in overlaps:
        source, target = sized[overlap.input], sized[overlap.output]
        joint = max(align_up(target.size, alignment), overlap.margin + align_up(source.size, alignment))
        saving = align_up(source.size, alignment) + align_up(target.size, alignment) - joint
        for step in range(max(source.first, target.first), min(source.last, target.last) + 1):
            live[step] -= max(saving, 0)
    return max(live)


def naive_bytes(buffers: Sequence[Buffer], alignment: int = 1) -> int:
    """Every buffer its own region: the arena without any reuse."""
    return sum(align_up(b.size, alignment) for b in buffers)
