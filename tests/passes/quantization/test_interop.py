"""edgec's QDQ output lowers through edgec's integer kernels (targets/integer, group-qdq)."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.verify import accuracy, run_onnx_batch
from tests.helpers import legalize, run_pipeline
from tests.passes.quantization.models import digits


def test_quantized_digits_lowers_to_integer_kernels():
    """Bound: TVM integer kernels vs onnxruntime on the same QDQ model, every logit within one
    output quantization step; no node left in float; same test accuracy."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from edgec.targets.legalize.group_qdq import refusals
    from edgec.targets.tvm.translate import translate

    model, calibration, test = digits()
    graph, _ = run_pipeline("quantize", model, verify=False, calibration=calibration)
    qdq = graph.to_onnx()
    legal = legalize(qdq)
    assert refusals(legal) == {}
    assert not [n.name for n in legal.nodes if not n.domain and n.op not in ("MaxPool", "Flatten", "Reshape")]
    vm = relax.VirtualMachine(tvm.compile(translate(legal), "llvm"), tvm.cpu())
    inputs = test["input"][:, None]
    expected = run_onnx_batch(qdq, {"input": inputs})["logits"]
    got = []
    for sample in inputs:
        out = vm["main"](tvm.runtime.tensor(sample))
        got.append((out if hasattr(out, "numpy") else out[0]).numpy())
    got = np.stack(got)
    output_dq = next(n for n in qdq.graph.node if n.output[0] == "logits")
    step = float(next(t for t in graph.constants() if t.name == output_dq.input[1]).values)
    assert np.all(np.rint(np.abs(got - expected) / step) <= 1)
    assert accuracy(got, test["label"]) == accuracy(expected, test["label"])
