"""The qat pass: the QDQ graph of quantize with trained values, and the options it refuses."""

from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from edgec.errors import EdgecError
from edgec.ir import op_sequence
from edgec.pm import PassContext, PassManager
from edgec.precision import planned
from edgec.train.export import accuracy_of
from tests.helpers import DIGITS, covers
from tests.train.conftest import digits, teacher  # noqa: F401 (fixtures)


def _context(data, **extra):
    calibration = {"input": data["train"]["input"][:64]}
    return PassContext(calibration=calibration, training=data["train"], evaluation=data["test"], **extra)


@pytest.fixture(scope="module")
def int4(teacher, digits):  # noqa: F811
    ptq = PassManager("quantize{scheme=weight-int4}", _context(digits)).run(teacher.copy())
    qat = PassManager("qat{scheme=weight-int4,epochs=2}", _context(digits)).run(teacher.copy())
    return ptq, qat


def _scales(graph):
    return {
        n.name: np.asarray(n.inputs[1].values)
        for n in graph.nodes
        if n.op == "DequantizeLinear" and isinstance(n.inputs[1], gs.Constant)
    }


@covers("qat", kind="structural")
def test_qat_keeps_the_quantized_graph_and_trains_its_values(int4):
    ptq, qat = int4
    assert op_sequence(qat.graph) == op_sequence(ptq.graph)
    assert planned(qat.graph) == planned(ptq.graph)  # the precision record the build is checked against
    # Reading a packed int4 constant's values unpacks it for good: inspect a copy.
    for node in qat.graph.copy().nodes:
        if node.op == "DequantizeLinear":
            values = np.asarray(node.inputs[0].values)
            assert values.dtype.name == "int4" and np.abs(values.astype(np.int8)).max() <= 7
    learned, calibrated = _scales(qat.graph), _scales(ptq.graph)
    assert learned.keys() == calibrated.keys()
    assert any(not np.array_equal(learned[k], calibrated[k]) for k in learned)  # scales were learned


@covers("qat", kind="numeric")
def test_qat_beats_ptq_and_the_graph_has_the_accuracy_reported(int4, digits):  # noqa: F811
    ptq, qat = int4
    stats = qat.records[-1].stats
    test = digits["test"]
    reported = stats["training"]["accuracy"]
    assert reported >= stats["ptq"]["accuracy"]["quantized"]
    assert accuracy_of(qat.graph, {"input": test["input"]}, test["label"]) == pytest.approx(
        reported, abs=1e-6
    )
    assert accuracy_of(ptq.graph, {"input": test["input"]}, test["label"]) <= reported
    # The float model taught it (distillation loss) and the labels: alpha 0.7.
    assert stats["alpha"] == 0.7 and json.dumps(stats)


@covers("qat", kind="negative")
def test_qat_refuses_missing_data_and_untrainable_schemes(teacher, digits):  # noqa: F811
    with pytest.raises(EdgecError, match="needs training data: pass --train"):
        PassManager("qat", PassContext(calibration={"input": digits["train"]["input"]})).run(teacher.copy())
    with pytest.raises(EdgecError, match="starts from a calibrated model: pass --calib"):
        PassManager("qat", PassContext(training=digits["train"])).run(teacher.copy())
    with pytest.raises(EdgecError, match="is not one of int8, weight-int8"):
        PassManager("qat{scheme=fp16}", PassContext()).run(teacher.copy())


def test_compile_options_expand_qat_and_refuse_it_without_data(tmp_path):
    from edgec.config import CompileOptions, load_config

    config = tmp_path / "edgec.toml"
    config.write_text('quantize = "weight-binary"\nqat = true\ntrain = "train.npz"\nepochs = 2\n')
    options = load_config(config)
    assert options.train == tmp_path / "train.npz"
    assert options.full_pipeline().endswith("qat{scheme=weight-binary,epochs=2}")

    options = CompileOptions(quantize="weight-int4", qat=True, train=DIGITS / "digits_train.npz", epochs=3)
    assert options.full_pipeline().endswith("qat{scheme=weight-int4,epochs=3}")
    with pytest.raises(EdgecError, match="add --train train\\.npz"):
        CompileOptions(quantize="int8", qat=True).full_pipeline()
    with pytest.raises(EdgecError, match="add --quantize int8"):
        CompileOptions(qat=True, train=DIGITS / "digits_train.npz").full_pipeline()
    with pytest.raises(EdgecError, match="add --qat"):
        CompileOptions(quantize="int8", epochs=3).full_pipeline()
