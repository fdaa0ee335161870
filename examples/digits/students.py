"""Small, untrained student CNNs for the digits distillation experiments (ONNX, seeded He init).

    student_cnn(channels=(4, 8), seed=0)

Architecture (NCHW, input ``input`` [1, 1, 8, 8], output ``logits`` [1, 10]):
``conv 3x3 1->c1 -> BN -> ReLU -> maxpool 2 -> conv 3x3 c1->c2 -> BN -> ReLU -> GAP -> flatten ->
fc c2->10``. With (4, 8) channels it has 474 parameters, with (8, 16) 1,514 (edgec inspect
counts, BatchNorm statistics included): 31x and 10x fewer than the teacher ``digits_cnn.onnx``
(14,698), and 65x and 19x fewer MACs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 10


def student_cnn(channels: tuple[int, int] = (4, 8), seed: int = 0) -> onnx.ModelProto:
    """A freshly initialised student (BatchNorm statistics 0/1: training recomputes them)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, values: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
        return name

    current, cin = "input", 1
    for index, cout in enumerate(channels, start=1):
        weight = rng.normal(0.0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3))
        conv_inputs = [
            current,
            init(f"conv{index}.weight", weight),
            init(f"conv{index}.bias", np.zeros(cout)),
        ]
        nodes.append(
            helper.make_node(
                "Conv", conv_inputs, [f"conv{index}_out"], name=f"conv{index}", pads=[1, 1, 1, 1]
            )
        )
        norm_inputs = [f"conv{index}_out"] + [
            init(f"bn{index}.{part}", value)
            for part, value in (("scale", np.ones(cout)), ("bias", np.zeros(cout)), ("mean", np.zeros(cout)))
        ]
        norm_inputs.append(init(f"bn{index}.var", np.ones(cout)))
        nodes.append(
            helper.make_node("BatchNormalization", norm_inputs, [f"bn{index}_out"], name=f"bn{index}")
        )
        nodes.append(helper.make_node("Relu", [f"bn{index}_out"], [f"relu{index}_out"], name=f"relu{index}"))
        current, cin = f"relu{index}_out", cout
        if index == 1:
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], ["pool_out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = "pool_out"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["gap_out"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"))
    bound = 1.0 / np.sqrt(cin)
    fc = [init("fc.weight", rng.uniform(-bound, bound, (CLASSES, cin))), init("fc.bias", np.zeros(CLASSES))]
    nodes.append(helper.make_node("Gemm", ["flat_out", *fc], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes,
        "digits_student",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgec-examples"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
