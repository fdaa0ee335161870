"""Small architectures built in code, with seeded random weights, for tests and benchmarks that
need shapes the onnx wheel's light models lack: a MobileNet-style depthwise-separable network
with hard-swish and inverted residuals, and a YOLO-style detector (two scales joined by Resize and
Concat, C2f blocks that Split their channels, one detection map per scale); and the two networks
of the microcontroller memory benchmark: MobileNetV2 and an MNIST-sized CNN.

Weights follow He initialisation and BatchNormalization statistics are positive, so activations
stay in a normal range and numeric comparisons mean something.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    """Appends Conv/BatchNormalization/activation nodes with seeded weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, prefix: str, values: np.ndarray) -> str:
        name = self.name(prefix)
        self.weights.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        name = self.name(op.lower())
        names = [f"{name}_out{i}" if outputs > 1 else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names

    def conv_bn(
        self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, group: int = 1, act: str = ""
    ) -> str:
        """Conv (no bias) → BatchNormalization → optional activation (``relu``, ``relu6``, ``hswish``,
        ``silu``)."""
        fan_in = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k)).astype(np.float32)
        (y,) = self.node("Conv", [x, self.const("w", w)], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2] * 4, group=group)  # fmt: skip
        scale, shift = self.rng.uniform(0.5, 1.5, cout), self.rng.normal(0, 0.1, cout)
        stats = [scale, shift, self.rng.normal(0, 0.1, cout), self.rng.uniform(0.5, 1.5, cout)]
        (y,) = self.node("BatchNormalization", [y, *(self.const("bn", s.astype(np.float32)) for s in stats)])
        if act == "relu":
            (y,) = self.node("Relu", [y])
        elif act == "relu6":
            bounds = [self.const("clip", np.array(v, np.float32)) for v in (0.0, 6.0)]
            (y,) = self.node("Clip", [y, *bounds])
        elif act == "hswish":
            (y,) = self.node("HardSwish", [y])
        elif act == "silu":
            (gate,) = self.node("Sigmoid", [y])
            (y,) = self.node("Mul", [y, gate])
        return y

    def classifier(self, x: str, features: int, classes: int) -> str:
        """Gemm ``x @ W^T + 0`` with He-scaled weights (the fully connected layer of a classifier)."""
        fc = self.rng.normal(0, np.sqrt(1.0 / features), (classes, features)).astype(np.float32)
        weight = self.const("fc", fc)
        return self.node("Gemm", [x, weight, self.const("fc_b", np.zeros(classes, np.float32))], transB=1)[0]

    def model(self, name: str, x: str, shape: list[int], outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.weights,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
        return inferred


def _scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, a multiple of 8 (at least 8)."""
    return max(8, math.floor(channels * width / 8 + 0.5) * 8)


def mobilenet_style(
    size: int = 224, classes: int = 1000, width: float = 1.0, seed: int = 0
) -> onnx.ModelProto:
    """A MobileNetV3-style network: hard-swish stem, depthwise-separable and inverted-residual
    blocks (expand 1x1 → depthwise 3x3 → project 1x1, residual Add when the shape allows),
    a 1x1 head conv, global pooling, Flatten and a Gemm classifier. Input ``[1, 3, size, size]``;
    ``width`` scales every layer's channels (0.5 fits a Cortex-M4's flash)."""
    b = _Builder(seed)
    stem = _scaled(16, width)
    y = b.conv_bn("input", 3, stem, k=3, stride=2, act="hswish")
    y = b.conv_bn(b.conv_bn(y, stem, stem, k=3, group=stem, act="relu"), stem, stem)
    channels = stem
    # (expansion, output channels, stride, activation)
    for expand, out, stride, act in [
        (64, 24, 2, "relu"), (72, 24, 1, "relu"), (96, 40, 2, "hswish"), (160, 40, 1, "hswish"),
        (240, 80, 2, "hswish"), (320, 80, 1, "hswish"), (480, 112, 1, "hswish"),
    ]:  # fmt: skip
        expand, out = _scaled(expand, width), _scaled(out, width)
        inner = b.conv_bn(y, channels, expand, act=act)
        inner = b.conv_bn(inner, expand, expand, k=3, stride=stride, group=expand, act=act)
        inner = b.conv_bn(inner, expand, out)
        y = b.node("Add", [inner, y])[0] if stride == 1 and out == channels else inner
        channels = out
    head = _scaled(576, width)
    y = b.conv_bn(y, channels, head, act="hswish")
    (y,) = b.node("Flatten", b.node("GlobalAveragePool", [y]))
    return b.model("mobilenet_style", "input", [1, 3, size, size], [b.classifier(y, head, classes)])


# MobileNetV2's inverted residual stages (expansion t, output channels c, repeats n, first stride
# s): Table 2 of Sandler et al. 2018.
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))  # fmt: skip


def _divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: to a multiple of ``divisor``, never below 90 % of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2(size: int = 96, classes: int = 2, width: float = 0.35, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 (Sandler et al. 2018): a 3x3 stride-2 stem, seventeen inverted residual blocks
    (expand 1x1 → depthwise 3x3 → project 1x1 without activation, residual Add when the shape
    allows), a 1x1 conv to 1280 channels, global pooling and a classifier; ReLU6 activations.
    The defaults are the Visual Wake Words configuration of the microcontroller literature:
    width 0.35, a 96x96 RGB input, two classes."""
    b = _Builder(seed)
    channels = _divisible(32 * width)
    y = b.conv_bn("input", 3, channels, k=3, stride=2, act="relu6")
    for expansion, c, repeats, first_stride in _MOBILENET_V2:
        out = _divisible(c * width)
        for index in range(repeats):
            stride = first_stride if index == 0 else 1
            hidden = channels * expansion
            inner = y if expansion == 1 else b.conv_bn(y, channels, hidden, act="relu6")
            inner = b.conv_bn(inner, hidden, hidden, k=3, stride=stride, group=hidden, act="relu6")
            inner = b.conv_bn(inner, hidden, out)
            y = b.node("Add", [y, inner])[0] if stride == 1 and channels == out else inner
            channels = out
    last = _divisible(1280 * max(1.0, width))
    y = b.conv_bn(y, channels, last, act="relu6")
    (y,) = b.node("Flatten", b.node("GlobalAveragePool", [y]))
    return b.model("mobilenet_v2", "input", [1, 3, size, size], [b.classifier(y, last, classes)])


def mnist_cnn(seed: int = 0) -> onnx.ModelProto:
    """The MNIST-sized CNN of the Cortex-M int8 anchor (``shared/research/cortex-m-int8-anchor.md``):
    Conv3x3 1→32, ReLU, MaxPool 2, Conv3x3 32→64, ReLU, MaxPool 2, Flatten, FC 3136→128, ReLU,
    FC 128→10 on a 1x1x28x28 input (4.24 M MACs)."""
    b = _Builder(seed)
    y = b.conv_bn("input", 1, 32, k=3, act="relu")
    y = b.conv_bn(b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])[0], 32, 64, k=3, act="relu")
    (y,) = b.node("Flatten", b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]))
    (y,) = b.node("Relu", [b.classifier(y, 3136, 128)])
    return b.model("mnist_cnn", "input", [1, 1, 28, 28], [b.classifier(y, 128, 10)])


def yolo_style(size: int = 320, classes: int = 8, width: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """A YOLOv8-style detector: a strided backbone with C2f blocks (1x1 conv → Split in halves →
    bottlenecks on one half → Concat of all → 1x1 conv), SiLU activations, a neck that upsamples
    the stride-32 features (Resize) and concatenates them with the stride-16 ones, and one
    detection conv (3 anchors x (5 + classes)) per scale. Input ``[1, 3, size, size]``; ``width``
    scales every layer's channels."""
    b = _Builder(seed)
    c16, c32, c64, c128, c256 = (_scaled(c, width) for c in (16, 32, 64, 128, 256))

    def c2f(x: str, cin: int, cout: int, blocks: int) -> str:
        half = cout // 2
        y = b.conv_bn(x, cin, cout, act="silu")
        split = b.const("split", np.array([half, half], np.int64))
        parts = b.node("Split", [y, split], outputs=2, axis=1)
        last = parts[1]
        for _ in range(blocks):
            inner = b.conv_bn(b.conv_bn(last, half, half, k=3, act="silu"), half, half, k=3, act="silu")
            last = b.node("Add", [inner, last])[0]
            parts.append(last)
        (joined,) = b.node("Concat", parts, axis=1)
        return b.conv_bn(joined, half * len(parts), cout, act="silu")

    y = b.conv_bn("input", 3, c16, k=3, stride=2, act="silu")
    y = c2f(b.conv_bn(y, c16, c32, k=3, stride=2, act="silu"), c32, c32, 1)
    y = c2f(b.conv_bn(y, c32, c64, k=3, stride=2, act="silu"), c64, c64, 1)
    p4 = c2f(b.conv_bn(y, c64, c128, k=3, stride=2, act="silu"), c128, c128, 1)
    p5 = c2f(b.conv_bn(p4, c128, c256, k=3, stride=2, act="silu"), c256, c256, 1)
    scales = b.const("scales", np.array([1, 1, 2, 2], np.float32))
    (up,) = b.node("Resize", [p5, "", scales], mode="nearest")
    (neck,) = b.node("Concat", [up, p4], axis=1)
    neck = c2f(neck, c256 + c128, c128, 1)
    outputs = []
    for features, channels in ((neck, c128), (p5, c256)):
        head = b.conv_bn(features, channels, c64, k=3, act="silu")
        w = b.rng.normal(0, np.sqrt(1.0 / c64), (3 * (5 + classes), c64, 1, 1)).astype(np.float32)
        bias = np.zeros(3 * (5 + classes), np.float32)
        outputs += b.node("Conv", [head, b.const("det", w), b.const("det_b", bias)], kernel_shape=[1, 1])
    return b.model("yolo_style", "input", [1, 3, size, size], outputs)
