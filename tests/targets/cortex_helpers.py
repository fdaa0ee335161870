"""Shared by the Cortex target tests: build an ONNX model for a target and run it under qemu."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.ir import EdgeGraph
from edgec.targets import get_target
from edgec.targets.base import Artifact
from edgec.verify import random_inputs, run_onnx
from tests.helpers import REPO, make_model, rng

DIGITS_ONNX = REPO / "examples" / "digits" / "digits_cnn.onnx"
# DESIGN.md / issue 7: fp32 artifacts match onnxruntime within this absolute error.
FP32_ATOL = 1e-4


def needs_tools(*tools: str):
    """Skip (with the package to install) when a cross tool or emulator is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"missing {missing}; see .ci/run for the apt packages")


def manifest_of(graph: EdgeGraph) -> dict:
    """The part of a manifest that ``Target.run`` reads (inputs/outputs with dtype and shape)."""

    def describe(t):
        return {"name": t.name, "dtype": np.dtype(t.dtype).name, "shape": list(t.shape)}

    return {"inputs": [describe(t) for t in graph.inputs], "outputs": [describe(t) for t in graph.outputs]}


def build(target_name: str, model: onnx.ModelProto, out_dir: Path, name: str) -> tuple[Artifact, dict]:
    """Legalizes, lowers and builds ``model`` (no user pipeline) into ``out_dir``; returns artifact,
    manifest."""
    target = get_target(target_name)
    graph = EdgeGraph.from_onnx(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    legal = target.legalize(graph.copy()).graph
    artifact = target.build(target.lower(legal).module, out_dir, name)
    return artifact, manifest_of(graph)


def max_error_vs_onnxruntime(
    target_name: str, model: onnx.ModelProto, build_dir: Path, manifest: dict
) -> float:
    """Runs the artifact on seeded random inputs and returns the max abs error vs onnxruntime."""
    graph = EdgeGraph.from_onnx(model)
    feeds = random_inputs(graph, seed=0)
    expected = run_onnx(model, feeds)
    outputs, _ = get_target(target_name).run(build_dir, manifest, [feeds[t.name][None] for t in graph.inputs])
    return max(
        float(np.abs(got[0] - expected[spec["name"]]).max())
        for got, spec in zip(outputs, manifest["outputs"], strict=True)
    )


def mobilenet_block_model() -> onnx.ModelProto:
    """A MobileNet-style net: 3x3 stride-2 conv + ReLU6, depthwise 3x3 + BN + ReLU, pointwise
    1x1 + ReLU, global average pool, flatten, fully connected (1x3x16x16 -> 1x10)."""
    r = rng(7)

    def weight(*shape: int) -> np.ndarray:
        return (r.standard_normal(shape) * 0.3).astype(np.float32)

    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("BatchNormalization", ["c2", "g", "beta", "mean", "var"], ["n2"]),
        helper.make_node("Relu", ["n2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    init = {
        "w1": weight(8, 3, 3, 3),
        "b1": weight(8),
        "lo": np.array(0.0, np.float32),
        "hi": np.array(6.0, np.float32),
        "w2": weight(8, 1, 3, 3),
        "g": (1.0 + 0.1 * r.standard_normal(8)).astype(np.float32),
        "beta": weight(8),
        "mean": weight(8),
        "var": (0.5 + r.random(8)).astype(np.float32),
        "w3": weight(16, 8, 1, 1),
        "b3": weight(16),
        "wf": weight(10, 16),
        "bf": weight(10),
    }
    return make_model(
        nodes,
        {"x": (TensorProto.FLOAT, [1, 3, 16, 16])},
        {"y": (TensorProto.FLOAT, [1, 10])},
        init,
        name="mobilenet_block",
    )


def mixed_channels_model() -> onnx.ModelProto:
    """Convolutions on both sides of the AArch64 int8 micro-kernels' limits: 3 -> 16 (3 input
    channels: a step of neither kernel unless ``pad-channels`` pads them), 16 -> 12 on a 7-wide map
    (16 input channels: lane-indexed sdot), 12 -> 6 1x1 (6 output channels: no kernel takes it),
    6 -> 8 stride 2 (a reduction of 6: sadalp's step, not sdot's), each with a ReLU, then a global
    average pool and an 8 -> 16 Gemm (1x3x7x7 -> 1x16)."""
    r = rng(11)
    layers = [(3, 16, 3, 1), (16, 12, 3, 1), (12, 6, 1, 1), (6, 8, 3, 2)]  # in, out, kernel, stride
    nodes, init, x = [], {}, "x"
    for i, (cin, cout, k, stride) in enumerate(layers):
        init[f"w{i}"] = (r.standard_normal((cout, cin, k, k)) * 0.4).astype(np.float32)
        init[f"b{i}"] = (r.standard_normal(cout) * 0.4).astype(np.float32)
        pads = [k // 2] * 4
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], strides=[stride] * 2, pads=pads)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    init["wg"] = (r.standard_normal((16, 8)) * 0.4).astype(np.float32)
    init["bg"] = (r.standard_normal(16) * 0.4).astype(np.float32)
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1),
    ]
    inputs, outputs = {"x": (TensorProto.FLOAT, [1, 3, 7, 7])}, {"y": (TensorProto.FLOAT, [1, 16])}
    return make_model(nodes, inputs, outputs, init, name="mixed")


def int8_qdq(model: onnx.ModelProto, samples: int = 16, seed: int = 5) -> onnx.ModelProto:
    """``model`` quantized to int8 QDQ by edgec's ``default,quantize``, calibrated on ``samples``
    seeded normal inputs (one graph input)."""
    from edgec.pm import PassContext, PassManager

    graph = EdgeGraph.from_onnx(model)
    (x,) = graph.inputs
    calibration = {
        x.name: rng(seed).standard_normal((samples, *[int(d) for d in x.shape])).astype(np.float32)
    }
    return PassManager("default,quantize", PassContext(calibration=calibration)).run(graph).graph.to_onnx()
