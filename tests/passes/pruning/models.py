"""A small builder of ONNX test models for the pruning tests, with seeded weights and optionally
*dead* channels (zero weights and bias): removing exactly those keeps the outputs unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph
from edgec.passes.pruning.groups import ChannelGroups
from edgec.pm import AnalysisManager, PassContext, PassManager, all_passes
from edgec.verify import random_inputs, run_onnx
from tests.helpers import make_model

F = TensorProto.FLOAT


class Net:
    """Appends nodes and seeded initializers; every method returns its output tensor's name."""

    def __init__(self, seed: int = 0, opset: int = 17) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.opset = opset

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def op(self, op: str, inputs: Sequence[str], name: str, outputs: int = 1, **attrs) -> str:
        names = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=name, **attrs))
        return names[0]

    def conv(
        self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, dead: Sequence[int] = ()
    ) -> str:
        w = self.rng.normal(0, 0.5, (cout, cin // group, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        w[list(dead)] = 0
        b[list(dead)] = 0
        pads = [k // 2] * 4
        return self.op(
            "Conv", [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)], name, pads=pads, group=group
        )

    def bn(self, x: str, channels: int, name: str) -> str:
        """Inference BatchNormalization with zero mean and shift (a dead channel stays zero)."""
        params = [
            self.rng.uniform(0.5, 1.5, channels),
            np.zeros(channels),
            np.zeros(channels),
            self.rng.uniform(0.5, 1.5, channels),
        ]
        inputs = [
            self.const(f"{name}.{part}", v.astype(np.float32)) for part, v in zip("sbmv", params, strict=True)
        ]
        return self.op("BatchNormalization", [x, *inputs], name)

    def gemm(self, x: str, k: int, n: int, name: str, dead: Sequence[int] = ()) -> str:
        w = self.rng.normal(0, 0.5, (n, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, n).astype(np.float32)
        w[list(dead)] = 0
        b[list(dead)] = 0
        return self.op("Gemm", [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)], name, transB=1)

    def model(self, inputs: dict[str, list[int]], outputs: dict[str, list[int] | tuple]) -> onnx.ModelProto:
        """The checked model; an output is a float shape or ``(TensorProto type, shape)``."""
        return make_model(
            self.nodes,
            {k: (F, v) for k, v in inputs.items()},
            {k: v if isinstance(v, tuple) else (F, v) for k, v in outputs.items()},
            self.inits,
            opset=self.opset,
        )


def groups_of(model: onnx.ModelProto) -> ChannelGroups:
    """The ``channel-groups`` analysis of ``model``."""
    all_passes()
    return AnalysisManager().get("channel-groups", EdgeGraph.from_onnx(model))


def group_with(groups: ChannelGroups, origin: str):
    """The group whose origins include ``origin``."""
    return next(g for g in groups.groups if origin in g.origins)


def members(group, role: str | None = None) -> dict[str, int]:
    """``{node: channels}`` of a group's members (of one role)."""
    return {use.node: count for use, count in group.members if role is None or use.role == role}


def prune(model: onnx.ModelProto, pipeline: str, **ctx) -> tuple[EdgeGraph, dict]:
    """Runs ``pipeline`` on ``model``; checks the result with the ONNX checker and onnxruntime
    (same output names and shapes); returns the graph and the last pass's stats."""
    graph = EdgeGraph.from_onnx(onnx.ModelProto.FromString(model.SerializeToString()))
    run = PassManager(pipeline, PassContext(**ctx)).run(graph)
    result = run.graph.to_onnx()
    onnx.checker.check_model(result, full_check=True)
    feeds = random_inputs(EdgeGraph.from_onnx(model))
    before, after = run_onnx(model, feeds), run_onnx(result, feeds)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    return run.graph, run.records[-1].stats


def outputs_equal(model: onnx.ModelProto, graph: EdgeGraph, seed: int = 0) -> None:
    """The pruned graph computes the same outputs as ``model`` (fp32 tolerance)."""
    feeds = random_inputs(EdgeGraph.from_onnx(model), seed=seed)
    expected, got = run_onnx(model, feeds), run_onnx(graph.to_onnx(), feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=1e-4, err_msg=name)


def weight(graph: EdgeGraph, node: str, index: int = 1) -> np.ndarray:
    return np.asarray(graph.node(node).inputs[index].values)
