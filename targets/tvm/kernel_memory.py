"""What each lowered kernel allocates besides its arguments: workspace (in the arena) and stack
arrays, read from the kernels' TIR after the default TIR pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgec.errors import EdgecError
from edgec.targets.memory_plan import align_up

__all__ = ["MAX_STACK_ALLOCA_BYTES", "KernelMemory", "kernel_memory"]


# TVM's LowerTVMBuiltin keeps a CPU buffer of constant size below this many bytes on the stack
# (``constant_size * nbytes < runtime::kMaxStackAlloca``, tvm/runtime/device_api.h); one of 1024
# bytes or more goes through TVMBackendAllocWorkspace, i.e. into the arena.
MAX_STACK_ALLOCA_BYTES = 1024
# Stack arrays are aligned to 64 bytes (TVM's kAllocAlignment): count that much slack per array.
_STACK_ARRAY_SLACK = 64


@dataclass(frozen=True)
class KernelMemory:
    """What one kernel allocates besides its arguments.

    Attributes:
        workspace_bytes: Buffers that become ``TVMBackendAllocWorkspace`` calls (in the arena),
            each rounded up to the shim's 16-byte alignment.
        stack_bytes: Buffers that become stack arrays, with alignment slack.
    """

    workspace_bytes: int
    stack_bytes: int


def kernel_memory(mod: Any, tvm_target: dict) -> dict[str, KernelMemory]:
    """Workspace and stack arrays of every kernel, read from the lowered TIR.

    Runs the default TIR pipeline (as ``tirx.build`` will: after ``StorageRewrite`` has merged
    buffers, before ``LowerTVMBuiltin`` decides stack array or workspace) and walks each
    kernel's ``AllocBuffer`` nodes with TVM FFI's structural walker; every buffer is counted as if
    all were live at once, an upper bound. The shim refuses (and the kernel fails) rather than
    overflow the planned workspace, so a wrong figure cannot corrupt memory.
    """
    import tvm
    import tvm_ffi

    target = tvm.target.Target(tvm_target)
    funcs = {
        gv: func.with_attr("global_symbol", gv.name_hint)
        for gv, func in mod.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    }
    if not funcs:
        return {}
    tir_mod = tvm.tirx.transform.BindTarget(target.with_host(target))(tvm.IRModule(funcs))
    pipeline, _, _ = tvm.tirx.get_tir_pipeline("default")
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        lowered = pipeline(tir_mod)
    memory = {}
    for gv, func in lowered.functions.items():
        buffers: list[Any] = []
        tvm_ffi.structural_walk(
            func.body, (tvm.tirx.AllocBuffer, lambda node, found=buffers: found.append(node.buffer))
        )
        workspace = stack = 0
        for buffer in buffers:
            if str(buffer.scope()) not in ("global", ""):
                continue  # local/shared scopes are registers or GPU memory, not CPU buffers
            extents = [int(e) if isinstance(e, tvm.tirx.IntImm) else None for e in buffer.shape]
            dtype = tvm_ffi.dtype(str(buffer.dtype))
            if None in extents:
                raise EdgecError(f"kernel '{gv.name_hint}' allocates a buffer of dynamic size {buffer.shape}")
            nbytes = int(np.prod(extents, dtype=np.int64)) * dtype.bits * dtype.lanes // 8
            if nbytes < MAX_STACK_ALLOCA_BYTES:
                stack += nbytes + _STACK_ARRAY_SLACK
            else:
                workspace += align_up(nbytes, 16)
        memory[gv.name_hint] = KernelMemory(workspace, stack)
    return memory
