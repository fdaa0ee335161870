"""A lowered Relax ``main`` as a straight-line program of kernel calls.

After the Relax lowering passes up to ``CallTIRRewrite`` (:func:`lower_to_calls`), ``main`` is a
straight line of ``alloc_tensor``, reshapes (views) and direct calls of TIR kernels with their
outputs as explicit arguments. :func:`read_program` reads that line into a :class:`Program`
(tensors, the storage holding each one, kernel steps with their workspaces, sized by TVM's own
analysis of the lowered kernels, :func:`.kernel_memory.kernel_memory`, constants);
:mod:`.arena` plans it. :func:`stock_plan_bytes` is TVM's own ``StaticPlanBlockMemory`` figure for
comparison.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.targets.memory_plan import Buffer
from edgec.targets.tvm.kernel_memory import KernelMemory, kernel_memory

# The function attribute of a kernel that writes its output row by row, in increasing row order,
# output row y after reading only input rows at or above y·stride - pad: ``[data argument, window
# rows, stride, pad]``, ``pad`` at least the padding above the input. The schedules that make such
# loop nests set it (schedule_common.row_window); the arena may then place the output over its
# dying input, ahead of it by the margin that allows (edgec.targets.tvm.arena).
ROW_WINDOW_ATTR = "edgec.row_window"

__all__ = [
    "KernelMemory",
    "Program",
    "Step",
    "Tensor",
    "kernel_memory",
    "lower_to_calls",
    "read_program",
    "stock_plan_bytes",
]


@dataclass
class Tensor:
    """A value of ``main``: its shape/dtype and the storage that holds its bytes (from byte
    ``offset`` on: a tensor a concatenation's producer writes into its slice of the result)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: str
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Step:
    """One kernel call: ``args`` name tensors (outputs last, as ``CallTIRRewrite`` orders them)."""

    kernel: str
    args: list[str]
    workspace_bytes: int
    op_pattern: int
    stack_bytes: int = 0
    # [data argument, window rows, stride, pad bound] when the kernel streams rows in order
    # (schedule_common.ROW_WINDOW_ATTR): its output may overlap its dying input.
    row_window: tuple[int, ...] | None = None


@dataclass
class Program:
    """The straight-line program of a lowered ``main``.

    Storages are ``input:<i>``, ``output:<i>``, ``const:<i>`` or ``alloc:<i>`` (arena).
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    constants: list[np.ndarray] = field(default_factory=list)
    storage_bytes: dict[str, int] = field(default_factory=dict)
    output_copies: list[tuple[int, str]] = field(default_factory=list)  # (output index, tensor)

    def buffers(self) -> list[Buffer]:
        """Arena buffers with lifetimes in steps (workspaces live for their one step)."""
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            for arg in step.args:
                storage = self.tensors[arg].storage
                if storage.startswith("alloc:"):
                    first.setdefault(storage, index)
                    last[storage] = index
        buffers = [Buffer(s, self.storage_bytes[s], first[s], last[s]) for s in first]
        for storage in self.storage_bytes:  # allocated but never used by a kernel
            if storage.startswith("alloc:") and storage not in first:
                buffers.append(Buffer(storage, self.storage_bytes[storage], 0, 0))
        for index, step in enumerate(self.steps):
            if step.workspace_bytes:
                buffers.append(Buffer(f"workspace:{index}", step.workspace_bytes, index, index))
        for index, name in self.output_copies:  # copied out after the last step
            storage = self.tensors[name].storage
            if storage.startswith("alloc:"):
                end = len(self.steps)
                buffers = [Buffer(b.name, b.size, b.first, end) if b.name == storage else b for b in buffers]
            del index
        return buffers


def _static_shape(ty: Any, what: str) -> tuple[tuple[int, ...], str]:
    from tvm import relax, tirx

    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        raise EdgecError(f"{what} is not a tensor with a known shape; runtime-free C needs static shapes")
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tirx.IntImm):
            raise EdgecError(f"{what} has the symbolic dimension {dim}; runtime-free C needs static shapes")
        dims.append(int(dim))
    return tuple(dims), str(ty.dtype)


def lower_to_calls(mod: Any, tvm_target: dict) -> Any:
    """The Relax passes that turn ``call_tir`` into direct kernel calls on explicit allocations."""
    import tvm
    from tvm import relax

    with tvm.target.Target(tvm_target):
        return tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                # Fused kernels lose their op_pattern; the in-place planner needs it back.
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.RewriteDataflowReshape(),
                relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(),
                relax.transform.CallTIRRewrite(),
            ]
        )(mod)


def read_program(mod: Any, memory: dict[str, KernelMemory] | None = None) -> Program:
    """Reads the straight-line ``main`` of a module after :func:`lower_to_calls`.

    Args:
        mod: The module.
        memory: Workspace and stack arrays per kernel name (:func:`kernel_memory`).

    Raises:
        UnsupportedNodeError: For a binding the C entry point cannot express (names the op).
    """
    import tvm
    from tvm import relax
    from tvm.ir.expr import GenericConst

    alloc_op = tvm.ir.Op.get("relax.builtin.alloc_tensor")
    reshape_op = tvm.ir.Op.get("relax.reshape")
    main = mod["main"]
    program = Program()
    names: dict[Any, str] = {}
    const_ids: dict[Any, int] = {}
    # Equal constants are stored once: the row bands of a patched stage (patch-stages) read the
    # same weights through constants of their own.
    by_content: dict[tuple[str, tuple[int, ...], bytes], int] = {}

    def new_tensor(var_name: str, shape, dtype, storage) -> str:
        name = f"{var_name}#{len(program.tensors)}"
        program.tensors[name] = Tensor(name, tuple(shape), dtype, storage)
        return name

    def resolve(expr: Any, what: str) -> str:
        if isinstance(expr, relax.Var):
            if expr not in names:
                raise EdgecError(f"runtime-free C: {what} uses '{expr.name}' before it is defined")
            return names[expr]
        if isinstance(expr, GenericConst):
            if expr not in const_ids:
                value = expr.value.numpy()
                key = (
                    value.dtype.str,
                    value.shape,
                    hashlib.sha256(np.ascontiguousarray(value).tobytes()).digest(),
                )
                if key not in by_content:
                    by_content[key] = len(program.constants)
                    program.constants.append(value)
                const_ids[expr] = by_content[key]
            index = const_ids[expr]
            array = program.constants[index]
            return new_tensor(f"const{index}", array.shape, str(array.dtype), f"const:{index}")
        raise UnsupportedNodeError(what, type(expr).__name__, "runtime-free C only passes tensors to kernels")

    tuples: dict[Any, list[str]] = {}
    for index, param in enumerate(main.params):
        shape, dtype = _static_shape(param.ty, f"input '{param.name}'")
        names[param] = new_tensor(param.name, shape, dtype, f"input:{index}")
        program.inputs.append(names[param])
    for block in main.body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            label = var.name
            if isinstance(value, relax.Var) and value in tuples:
                tuples[var] = tuples[value]
            elif isinstance(value, relax.Var | GenericConst):
                names[var] = resolve(value, label)
            elif isinstance(value, relax.Tuple):
                # A multi-output model binds its outputs as a tuple before returning it.
                tuples[var] = [resolve(field, f"{label} field") for field in value.fields]
            elif isinstance(value, relax.TupleGetItem) and value.tuple_value in tuples:
                names[var] = tuples[value.tuple_value][value.index]
            elif isinstance(value, relax.Call) and value.op.same_as(alloc_op):
                shape, dtype = _static_shape(var.ty, f"tensor '{label}'")
                storage = f"alloc:{len(program.storage_bytes)}"
                names[var] = new_tensor(label, shape, dtype, storage)
                program.storage_bytes[storage] = program.tensors[names[var]].nbytes
            elif isinstance(value, relax.Call) and value.op.same_as(reshape_op):
                # A reshape is a view: the same bytes under another shape.
                source = program.tensors[resolve(value.args[0], label)]
                shape, dtype = _static_shape(var.ty, f"tensor '{label}'")
                names[var] = new_tensor(label, shape, dtype, source.storage)
            elif isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
                func = mod[value.op]
                if not isinstance(func, tvm.tirx.PrimFunc):
                    raise UnsupportedNodeError(
                        label, value.op.name_hint, "runtime-free C calls only TIR kernels"
                    )
                args = [resolve(arg, f"{value.op.name_hint} argument") for arg in value.args]
                kernel = (memory or {}).get(value.op.name_hint, KernelMemory(0, 0))
                attrs = func.attrs or {}
                pattern = int(attrs["op_pattern"]) if "op_pattern" in attrs else 99
                rows = tuple(int(v) for v in attrs[ROW_WINDOW_ATTR]) if ROW_WINDOW_ATTR in attrs else None
                program.steps.append(
                    Step(value.op.name_hint, args, kernel.workspace_bytes, pattern, kernel.stack_bytes, rows)
                )
            else:
                op = value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else None
                raise UnsupportedNodeError(
                    label,
                    op or type(value).__name__,
                    "the runtime-free C entry point cannot emit this Relax operation "
                    "(it has no TIR kernel); the x86 target (TVM runtime) may support it",
                )
    body = main.body.body
    if isinstance(body, relax.Var) and body in tuples:
        result_names = tuples[body]
    else:
        results = list(body.fields) if isinstance(body, relax.Tuple) else [body]
        result_names = [resolve(expr, f"output {index}") for index, expr in enumerate(results)]
    claimed: set[str] = set()
    for index, name in enumerate(result_names):
        tensor = program.tensors[name]
        program.outputs.append(name)
        if tensor.storage.startswith("alloc:") and tensor.storage not in claimed:
            claimed.add(tensor.storage)
            old = tensor.storage
            for other in program.tensors.values():
                if other.storage == old:
                    other.storage = f"output:{index}"
            program.storage_bytes[f"output:{index}"] = program.storage_bytes.pop(old)
        else:
            program.output_copies.append((index, name))
    return program


def stock_plan_bytes(mod_after_calls: Any) -> int:
    """Bytes TVM's own ``StaticPlanBlockMemory`` allocates for ``main`` (for comparison).

    Sums the sizes of the ``alloc_storage`` calls it leaves (outputs included, as the VM
    allocates them too).
    """
    import tvm
    from tvm import relax

    planned = relax.transform.StaticPlanBlockMemory()(mod_after_calls)
    storage_op = tvm.ir.Op.get("relax.memory.alloc_storage")
    total = 0
    for block in planned["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(storage_op):
                total += int(np.prod([int(v) for v in value.args[0].values]))
    return total
