"""Helpers shared by the tests: build small ONNX models, run passes, compare with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager, PassRecord
from edgec.verify import random_inputs, run_onnx

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits"

# STYLE.md tolerances for lossless fp32 rewrites.
FP32_ATOL = 1e-5
FP32_RTOL = 1e-4


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, list[int | str]]],
    outputs: dict[str, tuple[int, list[int | str] | None]],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    name: str = "test",
) -> onnx.ModelProto:
    """A checked ONNX model from nodes; inputs/outputs map names to (TensorProto dtype, shape)."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


TEST_KINDS = ("structural", "numeric", "negative")


def covers(*passes: str, kind: str) -> pytest.MarkDecorator:
    """Marks a test as the ``kind`` test (structural, numeric or negative) of the named passes;
    the registry meta-test checks that every pass has all three."""
    if kind not in TEST_KINDS or not passes:
        raise ValueError(f"covers() takes pass names and kind in {TEST_KINDS}, not {passes}, {kind!r}")
    return pytest.mark.covers(*passes, kind=kind)


def run_pipeline(
    pipeline: str, model: onnx.ModelProto, verify: bool = True, **ctx_options
) -> tuple[EdgeGraph, list[PassRecord]]:
    """Runs a pipeline string on a copy of ``model`` (verifying lossless passes by default); returns
    the graph and the records of the top-level passes (those a pass ran itself are left out)."""
    graph = EdgeGraph.from_onnx(onnx.ModelProto.FromString(model.SerializeToString()))
    run = PassManager(pipeline, PassContext(verify=verify, **ctx_options)).run(graph)
    return run.graph, [record for record in run.records if record.parent is None]


def assert_same_outputs(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
    seed: int = 0,
) -> None:
    """Both models give the same outputs (onnxruntime, seeded random inputs)."""
    feeds = random_inputs(EdgeGraph.from_onnx(before), seed=seed)
    expected = run_onnx(before, feeds)
    got = run_onnx(after, feeds)
    assert sorted(expected) == sorted(got)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=atol, rtol=rtol, err_msg=name)


def legalize(
    model: onnx.ModelProto | EdgeGraph, target: str = "x86", rounding: str | None = None
) -> EdgeGraph:
    """The legal graph of ``model`` for ``target`` (its legalization pipeline, recorded), with the
    target's requantization rounding replaced when ``rounding`` is given."""
    import dataclasses

    from edgec.targets import get_target

    chosen = get_target(target)
    if rounding is not None:
        chosen = dataclasses.replace(chosen, requantize_rounding=rounding)
    graph = model.copy() if isinstance(model, EdgeGraph) else EdgeGraph.from_onnx(model)
    return chosen.legalize(graph).graph


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def instructions_per_kernel(module: Any, target: dict, mnemonic: str) -> dict[str, int]:
    """Kernel name -> how many ``mnemonic`` instructions its machine code for ``target`` holds
    (parallel bodies included)."""
    import re

    import tvm

    asm = tvm.compile(module, tvm.target.Target(target)).mod.imports[0].inspect_source("asm")
    counts: dict[str, int] = {}
    symbol = ""
    for line in asm.splitlines():
        label = re.match(r"^([A-Za-z_][\w.]*):", line)
        if label:
            # TVM names a kernel's parallel body <kernel>_compute_ and its entry __tvm_ffi_<kernel>.
            symbol = label.group(1).removeprefix("__tvm_ffi_").removesuffix("_compute_")
        elif re.search(rf"\b{mnemonic}\b", line):
            counts[symbol] = counts.get(symbol, 0) + 1
    return counts


def pass_stats(records: list[PassRecord], name: str) -> dict:
    """The stats of the first record of pass ``name``."""
    return next(r.stats for r in records if r.name == name)


def refusal_reasons(records: list[PassRecord], name: str) -> list[str]:
    """The reasons pass ``name`` gave for what it refused (its ``refused`` stats)."""
    return [item["reason"] for item in pass_stats(records, name).get("refused", [])]
