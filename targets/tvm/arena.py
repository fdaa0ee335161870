"""The arena of a runtime-free program: which tensors share bytes, where each one lives, and the
memory timeline of one call.

Four ways for a tensor to take no bytes (or few) of its own, each decided here from the program and
each listed in the report:

* **element-wise in place**: an element-wise or broadcast kernel (TVM's ``op_pattern`` 0/1; a
  residual ``Add`` that did not fuse into its conv is one) writes its output over an input of the
  same size that dies at that step (:func:`in_place_pairs`);
* **row streaming in place** (TinyEngine's in-place depthwise convolution, for any conv whose
  schedule writes output rows in order, :data:`.relax_program.ROW_WINDOW_ATTR`): the output is
  placed over its dying input, starting ``margin`` bytes ahead of it, where ``margin`` is the
  least that keeps every output row clear of the input rows still to be read
  (:func:`row_overlaps`). Output row ``y`` (``R_o`` bytes) is written after reading input rows
  from ``y·s - p`` on (``R_i`` bytes each), so ``margin = max_y ((y+1)·R_o - max(0, y·s - p)·R_i)``:
  two rows for a stride-1 3x3 depthwise conv, one output row for a stride-2 one, one output row for
  a 1x1 conv that narrows the channels. Such a kernel loses TVM's ``noalias`` promise
  (:func:`without_noalias`), so that the compiler keeps its loads and stores in program order;
* **concatenation in place**: a ``concatenate`` kernel along an axis whose leading dimensions are
  all 1 (the rows of an NHWC tensor: a patched stage's bands, :mod:`edgec.targets.legalize.patch_stages`)
  copies contiguous slices; each input whose only reader is that kernel is instead written by its
  producer straight into its slice of the result, and the kernel is dropped
  (:func:`alias_concatenations`);
* **reshapes** are views already (:func:`.relax_program.read_program`).

:func:`plan_arena` then places every storage and workspace with :mod:`edgec.targets.memory_plan`,
and :func:`memory_timeline` reports the bytes live at each step and what is live at the peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

from edgec.targets.memory_plan import (
    Buffer,
    MemoryPlan,
    Overlap,
    align_up,
    liveness_lower_bound,
    naive_bytes,
    plan_greedy_by_size,
)
from edgec.targets.tvm.relax_program import Program

__all__ = [
    "ARENA_ALIGNMENT",
    "ArenaPlan",
    "alias_concatenations",
    "in_place_pairs",
    "memory_report",
    "memory_timeline",
    "plan_arena",
    "row_overlaps",
    "without_noalias",
]

ARENA_ALIGNMENT = 16
# TVM's op_pattern: element-wise and broadcast kernels read input element i to write output i.
_IN_PLACE_PATTERNS = (0, 1)
_INJECTIVE = 2


def _last_uses(program: Program) -> dict[str, int]:
    last: dict[str, int] = {}
    for index, step in enumerate(program.steps):
        for arg in step.args:
            last[program.tensors[arg].storage] = index
    for _, name in program.output_copies:
        last[program.tensors[name].storage] = len(program.steps)
    return last


def in_place_pairs(program: Program) -> list[tuple[str, str]]:
    """(input storage, output storage) pairs an element-wise kernel may write over."""
    last_use = _last_uses(program)
    pairs = []
    taken: set[str] = set()
    for index, step in enumerate(program.steps):
        if step.op_pattern not in _IN_PLACE_PATTERNS or step.workspace_bytes:
            continue
        out = program.tensors[step.args[-1]]
        if not out.storage.startswith("alloc:") or out.offset:
            continue
        for arg in step.args[:-1]:
            source = program.tensors[arg]
            if (
                source.storage.startswith("alloc:")
                and not source.offset
                and source.storage not in taken
                and source.shape == out.shape
                and source.dtype == out.dtype
                and last_use[source.storage] == index
                and program.storage_bytes[source.storage] == program.storage_bytes[out.storage]
                and sum(program.tensors[a].storage == source.storage for a in step.args) == 1
            ):
                pairs.append((source.storage, out.storage))
                taken.add(source.storage)
                break
    return pairs


def _concat_axis(shapes: list[tuple[int, ...]], out: tuple[int, ...]) -> int | None:
    """The axis ``out`` concatenates ``shapes`` along, when every dimension before it is 1 (so
    each input is one contiguous slice of ``out``); ``None`` otherwise."""
    if any(len(shape) != len(out) for shape in shapes):
        return None
    differing = [a for a in range(len(out)) if any(shape[a] != out[a] for shape in shapes)]
    axis = differing[0] if len(differing) == 1 else None
    if axis is None or sum(shape[axis] for shape in shapes) != out[axis] or prod(out[:axis]) != 1:
        return None
    return axis


def alias_concatenations(program: Program) -> list[dict[str, Any]]:
    """Makes each contiguous concatenation's producers write into the slices of its result and
    drops the ``concatenate`` step (module docstring); returns what was aliased."""
    aliased = []
    index = 0
    while index < len(program.steps):
        step = program.steps[index]
        last_use = _last_uses(program)
        inputs = [program.tensors[a] for a in step.args[:-1]]
        out = program.tensors[step.args[-1]]
        storages = [t.storage for t in inputs]
        if (
            not step.kernel.startswith("concatenate")
            or step.op_pattern != _INJECTIVE
            or step.workspace_bytes
            or not out.storage.startswith("alloc:")
            or _concat_axis([t.shape for t in inputs], out.shape) is None
            or len(set(storages)) != len(storages)
            or any(not s.startswith("alloc:") or last_use[s] != index for s in storages)
            or any(t.offset or program.storage_bytes[t.storage] != t.nbytes for t in inputs)
        ):
            index += 1
            continue
        starts = [out.offset + sum(t.nbytes for t in inputs[:i]) for i in range(len(inputs))]
        if any(start % ARENA_ALIGNMENT for start in starts):  # kernels expect aligned buffers
            index += 1
            continue
        offset = out.offset
        for source in inputs:
            old = source.storage
            for tensor in program.tensors.values():
                if tensor.storage == old:
                    tensor.storage, tensor.offset = out.storage, tensor.offset + offset
            del program.storage_bytes[old]
            offset += source.nbytes
        aliased.append({"kernel": step.kernel, "step": index, "inputs": len(inputs), "bytes": out.nbytes})
        del program.steps[index]
    return aliased


def row_overlaps(
    program: Program, taken: set[str], alignment: int = ARENA_ALIGNMENT
) -> list[tuple[str, str, int, int]]:
    """``(input storage, output storage, margin, step)`` for each row-streaming kernel whose output
    may start ``margin`` bytes ahead of its dying input (module docstring), when that saves bytes;
    storages in ``taken`` (already written over) are left alone."""
    last_use = _last_uses(program)
    found = []
    for index, step in enumerate(program.steps):
        if step.row_window is None:
            continue
        argument, _, stride, pad = step.row_window
        data, out = program.tensors[step.args[argument]], program.tensors[step.args[-1]]
        if (
            len(data.shape) != 4
            or len(out.shape) != 4
            or any(not t.storage.startswith("alloc:") or t.offset for t in (data, out))
            or any(program.storage_bytes[t.storage] != t.nbytes for t in (data, out))
            or last_use[data.storage] != index
            or data.storage in taken
            or sum(program.tensors[a].storage == data.storage for a in step.args) != 1
        ):
            continue
        row_in = data.nbytes // data.shape[1]
        row_out = out.nbytes // out.shape[1]
        need = max((y + 1) * row_out - max(0, y * stride - pad) * row_in for y in range(out.shape[1]))
        margin = align_up(max(need, 0), alignment)
        if max(out.nbytes, margin + data.nbytes) < out.nbytes + data.nbytes:
            found.append((data.storage, out.storage, margin, index))
            taken.add(data.storage)
    return found


@dataclass(frozen=True)
class ArenaPlan:
    """Where every arena storage lives and how the plan compares with the bounds.

    Attributes:
        plan: the placement, with the overlaps it honoured.
        lower_bound_bytes: the liveness bound of the buffers, given the honoured overlaps.
        naive_bytes: every buffer its own region.
        steps: the step that writes each overlap's output (by output storage).
        buffers: the buffers placed.
    """

    plan: MemoryPlan
    lower_bound_bytes: int
    naive_bytes: int
    steps: dict[str, int]
    buffers: list[Buffer]

    def offset(self, storage: str) -> int:
        return self.plan.offsets[storage]

    @property
    def in_place(self) -> list[tuple[Overlap, int]]:
        """The honoured overlaps and the step of each."""
        return [(overlap, self.steps[overlap.output]) for overlap in self.plan.honoured]


def plan_arena(program: Program, alignment: int = ARENA_ALIGNMENT) -> ArenaPlan:
    """Greedy-by-size plan of the program's arena, with element-wise and row-streaming in place."""
    buffers = program.buffers()
    writers = {program.tensors[step.args[-1]].storage: i for i, step in enumerate(program.steps)}
    pairs = in_place_pairs(program)
    overlaps = [Overlap(source, out, 0) for source, out in pairs]
    overlaps += [Overlap(s, o, m) for s, o, m, _ in row_overlaps(program, {s for s, _ in pairs}, alignment)]
    plan = plan_greedy_by_size(buffers, alignment, overlaps)
    return ArenaPlan(
        plan,
        liveness_lower_bound(buffers, alignment, plan.honoured),
        naive_bytes(buffers, alignment),
        {o.output: writers[o.output] for o in overlaps},
        buffers,
    )


def without_noalias(module: Any, program: Program, arena: ArenaPlan) -> Any:
    """``module`` with TVM's ``noalias`` promise dropped from the kernels that write an output over
    their input from a margin (the compiler may otherwise reorder their overlapping accesses)."""
    kernels = {program.steps[step].kernel for overlap, step in arena.in_place if overlap.margin}
    if not kernels:
        return module
    module = module.clone()
    for name in kernels:
        gvar = module.get_global_var(name)
        module[gvar] = module[gvar].without_attr("tirx.noalias")
    return module


def memory_timeline(program: Program, arena: ArenaPlan) -> dict[str, Any]:
    """The arena bytes live at each step, and the buffers live at the peak (with what they hold).

    Returns:
        ``{"steps": [{"step", "kernel", "live_bytes"}], "peak": {"step", "kernel", "live_bytes",
        "live": [{"buffer", "bytes", "offset", "tensors"}]}}``, each live buffer's tensors named by
        the steps that write them.
    """
    # What each buffer holds, named by the kernels that write it (Relax's own names are lv<n>).
    holds: dict[str, list[str]] = {}
    for index, step in enumerate(program.steps):
        for arg in step.args[-1:]:
            storage = program.tensors[arg].storage
            holds.setdefault(storage, []).append(f"output of step {index} ({step.kernel})")
        if step.workspace_bytes:
            holds[f"workspace:{index}"] = [f"workspace of step {index} ({step.kernel})"]
    steps = []
    for index, step in enumerate(program.steps):
        live = [b for b in arena.buffers if b.first <= index <= b.last and b.size]
        steps.append(
            {"step": index, "kernel": step.kernel, "live_bytes": _union_bytes(live, arena.plan.offsets)}
        )
    if not steps:
        return {"steps": [], "peak": {}}
    peak = max(steps, key=lambda s: s["live_bytes"])
    live = sorted(
        (b for b in arena.buffers if b.first <= peak["step"] <= b.last),
        key=lambda b: arena.plan.offsets[b.name],
    )
    return {
        "steps": steps,
        "peak": {
            **peak,
            "live": [
                {
                    "buffer": b.name,
                    "bytes": b.size,
                    "offset": arena.plan.offsets[b.name],
                    "tensors": holds.get(b.name, [b.name]),
                }
                for b in live
            ],
        },
    }


def memory_report(
    program: Program, arena: ArenaPlan, concatenations: list[dict[str, Any]], module: Any
) -> dict[str, Any]:
    """What the manifest records about memory: the fused conv + pool kernels, the in-place steps
    (element-wise and concatenations), the timeline and the live set at the peak."""
    import tvm

    from edgec.targets.tvm.fused_schedules import fused_conv_pool_blocks

    def fused(kernel: str) -> bool:
        func = module[module.get_global_var(kernel)]
        return (
            isinstance(func, tvm.tirx.PrimFunc)
            and fused_conv_pool_blocks(tvm.s_tir.Schedule(func)) is not None
        )

    in_place = [
        {
            "step": step,
            "kernel": program.steps[step].kernel,
            "kind": (
                f"rows written over the dying input from {overlap.margin} B ahead"
                if overlap.margin
                else "element-wise over the dying input"
            ),
        }
        for overlap, step in arena.in_place
    ]
    in_place += [{**c, "kind": "concatenation: producers write into their slices"} for c in concatenations]
    return {
        "fused_kernels": sorted({s.kernel for s in program.steps if fused(s.kernel)}),
        "in_place": in_place,
        **memory_timeline(program, arena),
    }


def _union_bytes(buffers: list[Buffer], offsets: dict[str, int]) -> int:
    """Bytes of the arena the buffers cover (overlapping in-place pairs counted once)."""
    total, end = 0, 0
    for start, stop in sorted((offsets[b.name], offsets[b.name] + b.size) for b in buffers):
        total += max(0, stop - max(start, end))
        end = max(end, stop)
    return total
