"""The runtime-free C emitter: program extraction, planning, portable C kernels, refusals."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from edgec.errors import UnsupportedNodeError
from edgec.ir import EdgeGraph
from edgec.targets import get_target
from edgec.targets.tvm import relax_program
from edgec.targets.tvm.arena import plan_arena
from tests.targets.cortex_helpers import DIGITS_ONNX, FP32_ATOL, build, max_error_vs_onnxruntime, needs_tools


@pytest.fixture(scope="module")
def digits_program():
    # Without memory planning: portable C's kernels as TVM legalizes them, whose intermediates are
    # workspaces (PerElement, with planning, computes them per element instead).
    target = dataclasses.replace(get_target("c"), memory_planning=False)
    lowered = relax_program.lower_to_calls(
        target.lower(target.legalize(EdgeGraph.from_onnx(onnx.load(DIGITS_ONNX))).graph).module,
        target.tvm_target(),
    )
    workspaces = relax_program.kernel_memory(lowered, target.tvm_target())
    return lowered, relax_program.read_program(lowered, workspaces)


def test_program_is_a_straight_line_of_kernels(digits_program):
    _, program = digits_program
    assert len(program.inputs) == 1 and len(program.outputs) == 1
    assert program.tensors[program.inputs[0]].storage == "input:0"
    # The last kernel writes straight into the caller's output buffer: no copy, no arena bytes.
    assert program.tensors[program.outputs[0]].storage == "output:0"
    assert not program.output_copies
    assert program.steps and all(step.kernel for step in program.steps)
    # Every conv's weights and the FC matrix are constants (flash), not arena tensors.
    assert sum(c.size for c in program.constants) >= 14_000


def test_arena_plan_is_checked_and_between_bounds(digits_program):
    _, program = digits_program
    arena = plan_arena(program)
    arena.plan.check(arena.buffers)
    assert arena.lower_bound_bytes <= arena.plan.arena_bytes <= arena.naive_bytes
    # Workspaces come from TVM's analysis of the lowered kernels and are planned in the arena.
    assert any(step.workspace_bytes for step in program.steps)


def test_stock_plan_is_reported(digits_program):
    lowered, _ = digits_program
    assert relax_program.stock_plan_bytes(lowered) > 0


@needs_tools("gcc")
def test_portable_c_target_builds_and_runs_on_the_host(tmp_path):
    model = onnx.load(DIGITS_ONNX)
    artifact, manifest = build("c", model, tmp_path, "digits")
    kernels = (tmp_path / "digits_kernels.c").read_text()
    assert "tvm/" not in kernels and '#include "edgec_tvm_c.h"' in kernels
    assert "digits_kernels.c" in artifact.files
    assert max_error_vs_onnxruntime("c", model, tmp_path, manifest) <= FP32_ATOL


def test_an_operation_without_a_kernel_is_named():
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with builder.function("main", [x]):
        builder.emit_func_output(builder.emit(relax.op.argsort(x)))
    lowered = relax_program.lower_to_calls(builder.get(), {"kind": "llvm"})
    with pytest.raises(UnsupportedNodeError, match=r"relax\.argsort .*cannot emit this Relax operation"):
        relax_program.read_program(lowered)


@pytest.mark.parametrize(("floats", "workspace"), [(255, False), (256, True)])
def test_kernel_memory_puts_a_buffer_where_tvm_allocates_it(floats, workspace):
    """TVM keeps a buffer below 1024 bytes on the stack and allocates one of 1024 bytes or more
    from the workspace (the arena): the estimate must agree with the generated code exactly."""
    import tvm
    from tvm import te

    from edgec.targets.tvm.kernel_memory import kernel_memory

    a = te.placeholder((floats,), "float32", name="a")
    b = te.compute((floats,), lambda i: a[i] * 2, name="b")
    c = te.compute((floats,), lambda i: b[floats - 1 - i] + 1, name="c")  # b must be materialised
    mod = tvm.IRModule({"k": te.create_prim_func([a, c]).with_attr("global_symbol", "k")})
    memory = kernel_memory(mod, {"kind": "c"})["k"]
    assert (memory.workspace_bytes, memory.stack_bytes > 0) == ((1024, False) if workspace else (0, True))
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        source = tvm.tirx.build(mod, target=tvm.target.Target({"kind": "c"})).inspect_source()
    assert ("TVMBackendAllocWorkspace" in source) == workspace
