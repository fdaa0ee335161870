"""The model families edgec's default CPU schedules are measured on, built as ONNX graphs with
seeded random weights (the smaller builders of tests and the memory benchmark are in
:mod:`edgec.architectures`).

Each builder writes the graph the way training frameworks export that family, so the compiler
meets the ops and shapes it meets in the field:

* :func:`mobilenet` - a MobileNetV3-small-style classifier: depthwise-separable inverted
  residuals with squeeze-and-excitation, HardSwish/HardSigmoid, BatchNormalization unfused.
* :func:`attention_recognizer` - an OCR text recognizer: a depthwise CNN over a 48 x 320 line
  image, then transformer blocks (MatMul/Softmax attention, LayerNorm decomposed into
  ReduceMean/Sub/Pow/Sqrt/Div as exporters write it, Erf GELU), per-column class scores.
* :func:`yolo` - a YOLOv8-style detector: Conv+SiLU, C2f blocks (Split, Concat), SPPF (MaxPool),
  a Resize/Concat neck, decoupled heads and the DFL box decoding (Softmax over 16 bins).

``width`` and the input size scale a builder down for tests; the defaults are the sizes the
latency benchmark uses.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["FAMILIES", "attention_recognizer", "family_model", "mobilenet", "yolo"]


class _Graph:
    """Appends nodes and seeded weights; each helper returns the name of its output."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        name = self._name(stem)
        self.weights.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    def conv(
        self, x: str, cin: int, cout: int, k: int | tuple[int, int] = 1, stride=1, groups: int = 1, bn=False
    ) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        fan_in = cin // groups * kh * kw
        w = self.rng.normal(0, math.sqrt(2.0 / fan_in), (cout, cin // groups, kh, kw)).astype(np.float32)
        inputs = [x, self.const(w, "w")]
        if not bn:
            inputs.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b"))
        pads = [kh // 2, kw // 2, kh // 2, kw // 2]
        y = self.op("Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw], pads=pads, group=groups)
        if not bn:
            return y
        stats = [
            self.rng.uniform(0.5, 1.5, cout),
            self.rng.normal(0, 0.1, cout),
            self.rng.normal(0, 0.1, cout),
            self.rng.uniform(0.5, 1.5, cout),
        ]
        return self.op("BatchNormalization", [y, *(self.const(s.astype(np.float32)) for s in stats)])

    def act(self, x: str, kind: str) -> str:
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "hardswish":
            return self.op("HardSwish", [x])
        if kind == "silu":  # exporters write SiLU as x * sigmoid(x)
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        if kind == "gelu":  # x * 0.5 * (1 + erf(x / sqrt 2))
            erf = self.op("Erf", [self.op("Div", [x, self.const(np.float32(math.sqrt(2.0)))])])
            half = self.op("Mul", [x, self.const(np.float32(0.5))])
            return self.op("Mul", [half, self.op("Add", [erf, self.const(np.float32(1.0))])])
        raise ValueError(kind)

    def squeeze_excite(self, x: str, channels: int, reduced: int) -> str:
        pooled = self.op("GlobalAveragePool", [x])
        hidden = self.act(self.conv(pooled, channels, reduced), "relu")
        gate = self.op("HardSigmoid", [self.conv(hidden, reduced, channels)], alpha=1.0 / 6, beta=0.5)
        return self.op("Mul", [x, gate])

    def linear(self, x: str, cin: int, cout: int) -> str:
        w = self.rng.normal(0, math.sqrt(1.0 / cin), (cin, cout)).astype(np.float32)
        b = self.rng.normal(0, 0.02, cout).astype(np.float32)
        return self.op("Add", [self.op("MatMul", [x, self.const(w, "w")]), self.const(b, "b")])

    def layer_norm(self, x: str, dim: int) -> str:
        """LayerNorm over the last axis, decomposed as PyTorch/Paddle exports write it."""
        mean = self.op("ReduceMean", [x], axes=[-1])
        centred = self.op("Sub", [x, mean])
        var = self.op("ReduceMean", [self.op("Pow", [centred, self.const(np.float32(2.0))])], axes=[-1])
        std = self.op("Sqrt", [self.op("Add", [var, self.const(np.float32(1e-5))])])
        normed = self.op("Div", [centred, std])
        gamma = self.const(self.rng.uniform(0.8, 1.2, dim).astype(np.float32))
        beta = self.const(self.rng.normal(0, 0.05, dim).astype(np.float32))
        return self.op("Add", [self.op("Mul", [normed, gamma]), beta])

    def model(self, name: str, inputs: dict[str, list[int]], output: str, out_shape: list[int]):
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            self.weights,
        )
        # Opset 14 (HardSwish): ReduceMean still takes axes as an attribute, Split its sizes an input.
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


# MobileNetV3-small: (expanded, out, kernel, stride, squeeze-excite, activation) per block.
_MOBILENET_BLOCKS = (
    (16, 16, 3, 2, True, "relu"),
    (72, 24, 3, 2, False, "relu"),
    (88, 24, 3, 1, False, "relu"),
    (96, 40, 5, 2, True, "hardswish"),
    (240, 40, 5, 1, True, "hardswish"),
    (240, 40, 5, 1, True, "hardswish"),
    (120, 48, 5, 1, True, "hardswish"),
    (144, 48, 5, 1, True, "hardswish"),
    (288, 96, 5, 2, True, "hardswish"),
    (576, 96, 5, 1, True, "hardswish"),
    (576, 96, 5, 1, True, "hardswish"),
)


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width / 8) * 8)


def mobilenet(size: int = 224, width: float = 1.0, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """A MobileNetV3-small-style classifier (logits), input ``1x3xSIZExSIZE``."""
    g = _Graph(seed)
    channels = _scaled(16, width)
    x = g.act(g.conv("image", 3, channels, 3, 2, bn=True), "hardswish")
    for expanded, out, k, stride, se, kind in _MOBILENET_BLOCKS:
        expanded, out = _scaled(expanded, width), _scaled(out, width)
        y = x
        if expanded != channels:
            y = g.act(g.conv(y, channels, expanded, 1, bn=True), kind)
        y = g.act(g.conv(y, expanded, expanded, k, stride, groups=expanded, bn=True), kind)
        if se:
            y = g.squeeze_excite(y, expanded, _scaled(expanded // 4, 1.0))
        y = g.conv(y, expanded, out, 1, bn=True)
        x = g.op("Add", [x, y]) if stride == 1 and out == channels else y
        channels = out
    last = _scaled(576, width)
    x = g.op("GlobalAveragePool", [g.act(g.conv(x, channels, last, 1, bn=True), "hardswish")])
    x = g.op("Flatten", [x])
    w1 = g.rng.normal(0, math.sqrt(1.0 / last), (1024, last)).astype(np.float32)
    x = g.act(g.op("Gemm", [x, g.const(w1), g.const(np.zeros(1024, np.float32))], transB=1), "hardswish")
    w2 = g.rng.normal(0, math.sqrt(1.0 / 1024), (classes, 1024)).astype(np.float32)
    x = g.op("Gemm", [x, g.const(w2), g.const(np.zeros(classes, np.float32))], transB=1)
    return g.model("mobilenet", {"image": [1, 3, size, size]}, x, [1, classes])


def attention_recognizer(
    height: int = 48,
    width: int = 320,
    dim: int = 128,
    heads: int = 4,
    blocks: int = 2,
    classes: int = 97,
    seed: int = 0,
) -> onnx.ModelProto:
    """An OCR line recognizer: depthwise CNN to a ``width/4``-long sequence, transformer blocks,
    per-position class scores (``1 x width/4 x classes``)."""
    g = _Graph(seed)
    x = g.act(g.conv("image", 3, 32, 3, 2, bn=True), "hardswish")  # H/2 x W/2
    plan = ((32, 64, (2, 2)), (64, 128, (2, 1)), (128, dim, (2, 1)))
    for cin, cout, stride in plan:
        x = g.act(g.conv(x, cin, cin, 3, stride, groups=cin, bn=True), "hardswish")
        x = g.act(g.conv(x, cin, cout, 1, bn=True), "hardswish")
    rows = height // 16
    x = g.op("AveragePool", [x], kernel_shape=[rows, 1])  # collapse the rows: 1 x dim x 1 x W/4
    seq = width // 4
    x = g.op("Transpose", [g.op("Reshape", [x, g.const(np.array([1, dim, seq], np.int64))])], perm=[0, 2, 1])
    head_dim = dim // heads
    for _ in range(blocks):
        h = g.layer_norm(x, dim)
        split_heads = g.const(np.array([1, seq, 3, heads, head_dim], np.int64))
        qkv = g.op("Reshape", [g.linear(h, dim, 3 * dim), split_heads])
        qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # 3 x 1 x heads x seq x head_dim
        q, k, v = (g.op("Gather", [qkv, g.const(np.array(i, np.int64))], axis=0) for i in range(3))
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = g.op("Mul", [scores, g.const(np.float32(head_dim**-0.5))])
        attended = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        attended = g.op("Transpose", [attended], perm=[0, 2, 1, 3])
        attended = g.op("Reshape", [attended, g.const(np.array([1, seq, dim], np.int64))])
        x = g.op("Add", [x, g.linear(attended, dim, dim)])
        h = g.act(g.linear(g.layer_norm(x, dim), dim, 2 * dim), "gelu")
        x = g.op("Add", [x, g.linear(h, 2 * dim, dim)])
    x = g.op("Softmax", [g.linear(g.layer_norm(x, dim), dim, classes)], axis=-1)
    return g.model("recognizer", {"image": [1, 3, height, width]}, x, [1, seq, classes])


def _c2f(g: _Graph, x: str, cin: int, cout: int, depth: int, shortcut: bool) -> str:
    """YOLOv8's C2f: 1x1 conv, Split in two, ``depth`` bottlenecks on the second half, Concat all."""
    hidden = cout // 2
    y = g.act(g.conv(x, cin, 2 * hidden, 1, bn=True), "silu")
    parts = list(g.op("Split", [y, g.const(np.array([hidden, hidden], np.int64))], outputs=2, axis=1))
    for _ in range(depth):
        z = g.act(g.conv(parts[-1], hidden, hidden, 3, bn=True), "silu")
        z = g.act(g.conv(z, hidden, hidden, 3, bn=True), "silu")
        parts.append(g.op("Add", [parts[-1], z]) if shortcut else z)
    return g.act(g.conv(g.op("Concat", parts, axis=1), (2 + depth) * hidden, cout, 1, bn=True), "silu")


def _down(g: _Graph, x: str, cin: int, cout: int) -> str:
    return g.act(g.conv(x, cin, cout, 3, 2, bn=True), "silu")


def yolo(size: int = 320, width: int = 16, classes: int = 80, seed: int = 0) -> onnx.ModelProto:
    """A YOLOv8-style detector (``width`` 16 is YOLOv8n): ``1 x (4 + classes) x anchors``."""
    g = _Graph(seed)
    c1, c2, c3, c4, c5 = width, 2 * width, 4 * width, 8 * width, 16 * width
    x = _down(g, _down(g, "image", 3, c1), c1, c2)
    x = _c2f(g, x, c2, c2, 1, True)
    p3 = _c2f(g, _down(g, x, c2, c3), c3, c3, 2, True)
    p4 = _c2f(g, _down(g, p3, c3, c4), c4, c4, 2, True)
    x = _c2f(g, _down(g, p4, c4, c5), c5, c5, 1, True)
    # SPPF: three chained 5x5 max pools, concatenated.
    y = g.act(g.conv(x, c5, c5 // 2, 1, bn=True), "silu")
    pools = [y]
    for _ in range(3):
        pools.append(g.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1]))
    p5 = g.act(g.conv(g.op("Concat", pools, axis=1), 2 * c5, c5, 1, bn=True), "silu")
    up = g.op("Resize", [p5, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    n4 = _c2f(g, g.op("Concat", [up, p4], axis=1), c5 + c4, c4, 1, False)
    up = g.op("Resize", [n4, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    n3 = _c2f(g, g.op("Concat", [up, p3], axis=1), c4 + c3, c3, 1, False)
    m4 = _c2f(g, g.op("Concat", [_down(g, n3, c3, c3), n4], axis=1), c3 + c4, c4, 1, False)
    m5 = _c2f(g, g.op("Concat", [_down(g, m4, c4, c4), p5], axis=1), c4 + c5, c5, 1, False)
    bins, box_c, cls_c = 16, max(16, c3 // 4, 4 * 16), max(c3, min(classes, 100))
    outputs, anchors = [], 0
    for feature, channels, stride in ((n3, c3, 8), (m4, c4, 16), (m5, c5, 32)):
        box = g.act(g.conv(feature, channels, box_c, 3, bn=True), "silu")
        box = g.conv(g.act(g.conv(box, box_c, box_c, 3, bn=True), "silu"), box_c, 4 * bins, 1)
        cls = g.act(g.conv(feature, channels, cls_c, 3, bn=True), "silu")
        cls = g.conv(g.act(g.conv(cls, cls_c, cls_c, 3, bn=True), "silu"), cls_c, classes, 1)
        cells = (size // stride) ** 2
        anchors += cells
        both = g.op("Concat", [box, cls], axis=1)
        outputs.append(g.op("Reshape", [both, g.const(np.array([1, 4 * bins + classes, cells], np.int64))]))
    x = g.op("Concat", outputs, axis=2)
    box, cls = g.op("Split", [x, g.const(np.array([4 * bins, classes], np.int64))], outputs=2, axis=1)
    # DFL: a distribution over 16 distance bins per box side, its expectation by a 1x1 conv.
    box = g.op("Reshape", [box, g.const(np.array([1, 4, bins, anchors], np.int64))])
    box = g.op("Softmax", [g.op("Transpose", [box], perm=[0, 2, 1, 3])], axis=1)
    expect = g.const(np.arange(bins, dtype=np.float32).reshape(1, bins, 1, 1))
    box = g.op("Reshape", [g.op("Conv", [box, expect]), g.const(np.array([1, 4, anchors], np.int64))])
    x = g.op("Concat", [box, g.op("Sigmoid", [cls])], axis=1)
    return g.model("yolo", {"image": [1, 3, size, size]}, x, [1, 4 + classes, anchors])


FAMILIES = {"mobilenet": mobilenet, "recognizer": attention_recognizer, "yolo": yolo}


def family_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A representative model of a family at its benchmark size (``mobilenet``, ``recognizer``, ``yolo``)."""
    from edgec.errors import EdgecError

    if name not in FAMILIES:
        raise EdgecError(f"no model family '{name}'; available: {', '.join(FAMILIES)}")
    return FAMILIES[name](seed=seed)
