"""What the pass families share: rule-set passes read shapes from the cached ``shapes`` analysis."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph
from edgec.pm import PassContext, PassManager
from tests.helpers import make_model


def _transpose_reshape_model() -> onnx.ModelProto:
    """Transpose then Reshape: every pass below needs shapes, none of them changes anything."""
    return make_model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0], name="transpose"),
            helper.make_node("Reshape", ["t", "target"], ["y"], name="reshape"),
        ],
        {"x": (TensorProto.FLOAT, [4, 6])},
        {"y": (TensorProto.FLOAT, [2, 12])},
        {"target": np.array([2, 12], np.int64)},
    )


def test_passes_share_one_shape_inference_until_the_graph_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    infer = onnx.shape_inference.infer_shapes

    def counting(model: onnx.ModelProto, *args: object, **kwargs: object) -> onnx.ModelProto:
        calls.append(model.graph.name)
        return infer(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counting)
    graph = EdgeGraph.from_onnx(_transpose_reshape_model())
    ctx = PassContext()
    run = PassManager("eliminate-identity,merge-transposes,merge-reshapes", ctx).run(graph)
    assert not any(record.changed for record in run.records)
    assert graph.tensors()["t"].shape == [6, 4]
    # Three passes that need shapes and the cost instrument around each: one inference.
    assert len(calls) == 1 and ctx.analyses.computed["shapes"] == 1
