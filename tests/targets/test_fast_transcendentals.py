"""fast_transcendentals (targets/tvm/relax_rewrites.py): float32 sigmoid/exp/tanh/erf/softmax become TVM's
vectorisable polynomials, fused into the conv epilogue, within 1e-6 of numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec.ir import EdgeGraph
from edgec.run import run_build
from edgec.targets.tvm.build import lower_for_cpu
from edgec.targets.tvm.translate import translate
from edgec.verify import run_onnx

tvm = pytest.importorskip("tvm")

AVX512 = {"kind": "llvm", "mcpu": "x86-64-v4"}


def _unary(op: str, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        op.lower(),
        [helper.make_tensor_value_info("x", dtype, [4, 1024])],
        [helper.make_tensor_value_info("y", dtype, [4, 1024])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _silu_conv() -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(0, 0.1, (16, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "silu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 32, 32])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _kernel_names(model: onnx.ModelProto) -> list[str]:
    module = lower_for_cpu(translate(EdgeGraph.from_onnx(model)), AVX512)
    return sorted(gv.name_hint for gv, f in module.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


def test_silu_becomes_a_polynomial_fused_into_the_conv_epilogue() -> None:
    names = _kernel_names(_silu_conv())
    assert any(n.startswith("fused_conv2d") and "fast_sigmoid_multiply" in n for n in names), names
    assert not any("tir_sigmoid" in n for n in names)


def test_float16_activations_keep_tvms_own_form() -> None:
    # The polynomials are float32 ones: a float16 sigmoid is left to TVM's legalization.
    names = _kernel_names(_unary("Sigmoid", TensorProto.FLOAT16))
    assert not any("fast_" in n for n in names) and any("sigmoid" in n for n in names)


@pytest.mark.parametrize("op", ["Sigmoid", "Exp", "Tanh", "Erf", "Softmax"])
def test_polynomials_match_onnxruntime_on_x86(op: str, tmp_path: Path) -> None:
    path = tmp_path / f"{op}.onnx"
    onnx.save_model(_unary(op), str(path))
    edgec.compile(path, tmp_path / "build")
    # Over the range the activations see (exp overflows float32 above ~88).
    bound = 80.0 if op == "Exp" else 12.0
    x = np.linspace(-bound, bound, 4096, dtype=np.float32).reshape(4, 1024)
    np.savez(tmp_path / "x.npz", x=x)
    got = run_build(tmp_path / "build", tmp_path / "x.npz")[0]["y"]
    want = run_onnx(_unary(op), {"x": x})["y"]
    # exp relative to its value, the bounded ones absolutely: float32 rounding territory either way.
    scale = np.abs(want) if op == "Exp" else 1.0
    assert np.all(np.abs(got - want) <= 2e-6 * scale + 1e-37)
