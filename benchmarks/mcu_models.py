"""The microcontroller benchmark models, built in code with seeded random weights.

* :func:`mnist_cnn`: the anchor's MNIST-sized CNN (``shared/research/cortex-m-int8-anchor.md``):
  Conv3x3 1→32 pad 1, ReLU, MaxPool2, Conv3x3 32→64 pad 1, ReLU, MaxPool2, Flatten,
  FC 3136→128, ReLU, FC 128→10 on a 1x1x28x28 input (4.24 M MACs).
* :func:`mobilenet_v2`: MobileNetV2 (Sandler et al. 2018) at width 0.35 on a 1x3x96x96 input with
  two classes, the Visual Wake Words configuration of the MCU literature: a 3x3 stride-2 stem,
  the seventeen inverted-residual blocks (expand 1x1, depthwise 3x3, project 1x1, residual Add
  when the shape allows), a 1x1 conv to 1280 channels, global average pool and a classifier.
  Batch normalization is folded into the convolutions (as an exporter would after training);
  activations are ReLU6 (``Clip 0..6``).

Weights are He-normal, biases small: the networks are untrained, which is what a memory and
instruction benchmark needs (the arithmetic and the shapes are those of the trained networks).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["calibration", "mnist_cnn", "mobilenet_v2"]

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the MobileNetV2 paper.
_INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


class _Builder:
    """Nodes and initializers of one ONNX graph, with fresh names and He-normal weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}

    def constant(self, prefix: str, values: np.ndarray) -> str:
        name = f"{prefix}_{len(self.initializers)}"
        self.initializers[name] = values.astype(np.float32)
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        output = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, group: int = 1) -> str:
        fan_in = cin // group * kernel * kernel
        weight = self.rng.standard_normal((cout, cin // group, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        bias = self.rng.standard_normal(cout) * 0.05
        pad = kernel // 2
        return self.node(
            "Conv",
            [x, self.constant("w", weight), self.constant("b", bias)],
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4, group=group,
        )  # fmt: skip

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.constant("lo", np.array(0.0)), self.constant("hi", np.array(6.0))])

    def gemm(self, x: str, cin: int, cout: int) -> str:
        weight = self.rng.standard_normal((cout, cin)) * np.sqrt(2.0 / cin)
        bias = self.rng.standard_normal(cout) * 0.05
        return self.node("Gemm", [x, self.constant("w", weight), self.constant("b", bias)], transB=1)

    def model(self, name: str, x_shape: list[int], y: str, y_shape: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)],
            [numpy_helper.from_array(v, k) for k, v in self.initializers.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def mnist_cnn(seed: int = 0) -> onnx.ModelProto:
    """The anchor's MNIST-sized CNN (1x1x28x28 → 10 logits)."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv("input", 1, 32, 3)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Relu", [b.conv(x, 32, 64, 3)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [x])
    x = b.node("Relu", [b.gemm(x, 3136, 128)])
    return b.model("mnist_cnn", [1, 1, 28, 28], b.gemm(x, 128, 10), [1, 10])


def _divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: to a multiple of ``divisor``, never below 90 % of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2(
    width: float = 0.35, resolution: int = 96, classes: int = 2, seed: int = 0
) -> onnx.ModelProto:
    """MobileNetV2 at ``width`` on a ``resolution`` x ``resolution`` RGB input."""
    b = _Builder(seed)
    channels = _divisible(32 * width)
    x = b.relu6(b.conv("input", 3, channels, 3, stride=2))
    for expansion, c, repeats, first_stride in _INVERTED_RESIDUALS:
        out = _divisible(c * width)
        for index in range(repeats):
            stride = first_stride if index == 0 else 1
            hidden = channels * expansion
            y = x if expansion == 1 else b.relu6(b.conv(x, channels, hidden, 1))
            y = b.relu6(b.conv(y, hidden, hidden, 3, stride=stride, group=hidden))
            y = b.conv(y, hidden, out, 1)
            x = b.node("Add", [x, y]) if stride == 1 and channels == out else y
            channels = out
    last = _divisible(1280 * max(1.0, width))
    x = b.relu6(b.conv(x, channels, last, 1))
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    return b.model("mobilenet_v2", [1, 3, resolution, resolution], b.gemm(x, last, classes), [1, classes])


def calibration(model: onnx.ModelProto, samples: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded calibration inputs in [0, 1) (an image's range) for the model's one input."""
    (tensor,) = model.graph.input
    shape = [d.dim_value for d in tensor.type.tensor_type.shape.dim]
    return {tensor.name: np.random.default_rng(seed).random((samples, *shape[1:])).astype(np.float32)}
