"""The arena of a runtime-free program: which tensors share bytes, where each one lives, and the
memory timeline of one call.

Three ways for a tensor to take no bytes of its own, each decided here from the program and each
listed in the report:

* **element-wise in place**: an element-wise or broadcast kernel (TVM's ``op_pattern`` 0/1; a
  residual ``Add`` that did not fuse into its conv is one) writes its output over an input of the
  same size that dies at that step (:func:`in_place_pairs`);
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
    liveness_lower_bound,
    merge_in_place,
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


@dataclass(frozen=True)
class ArenaPlan:
    """Where every arena storage lives and how the plan compares with the bounds."""

    plan: MemoryPlan
    owner: dict[str, str]
    lower_bound_bytes: int
    naive_bytes: int
    in_place: list[tuple[str, str]]
    buffers: list[Buffer]

    def offset(self, storage: str) -> int:
        return self.plan.offsets[self.owner.get(storage, storage)]


def plan_arena(program: Program, alignment: int = ARENA_ALIGNMENT) -> ArenaPlan:
    """Greedy-by-size plan of the program's arena, with element-wise in-place reuse."""
    buffers = program.buffers()
    pairs = in_place_pairs(program)
    merged, owner = merge_in_place(buffers, pairs)
    plan = plan_greedy_by_size(merged, alignment)
    return ArenaPlan(
        plan, owner, liveness_lower_bound(merged, alignment), naive_bytes(buffers, alignment), pairs, merged
    )


def memory_timeline(program: Program, arena: ArenaPlan) -> dict[str, Any]:
    """The arena bytes live at each step, and the buffers live at the peak (with what they hold).

    Returns:
        ``{"steps": [{"step", "kernel", "live_bytes"}], "peak": {"step", "kernel", "live_bytes",
        "live": [{"buffer", "bytes", "offset", "tensors"}]}}``.
    """
    holds: dict[str, list[str]] = {}
    for tensor in program.tensors.values():
        if tensor.storage.startswith("alloc:"):
            root = arena.owner.get(tensor.storage, tensor.storage)
            holds.setdefault(root, []).append(tensor.name.split("#")[0])
    steps = []
    for index, step in enumerate(program.steps):
        live = [b for b in arena.buffers if b.first <= index <= b.last]
        steps.append({"step": index, "kernel": step.kernel, "live_bytes": sum(b.size for b in live)})
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
                    "tensors": sorted(set(holds.get(b.name, []))) or ["(kernel workspace)"],
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

    writers = {
        program.tensors[step.args[-1]].storage: (i, step.kernel) for i, step in enumerate(program.steps)
    }
    in_place = [
        {"step": writers[out][0], "kernel": writers[out][1], "kind": "element-wise over a dying input"}
        for _, out in arena.in_place
    ]
    in_place += [{**c, "kind": "concatenation: producers write into their slices"} for c in concatenations]
    return {
        "fused_kernels": sorted({s.kernel for s in program.steps if fused(s.kernel)}),
        "in_place": in_place,
        **memory_timeline(program, arena),
    }
