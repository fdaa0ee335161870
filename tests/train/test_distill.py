"""Distillation: the API, the `edgec distill` command and its refusals of bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgec.cli import main
from edgec.errors import EdgecError
from edgec.train.distill import distill
from edgec.train.engine import TrainConfig
from tests.helpers import DIGITS
from tests.train.conftest import student_graph

CONFIG = TrainConfig(epochs=3, learning_rate=0.01)


@pytest.fixture(scope="module")
def distilled(teacher, digits):
    return distill(
        student_graph(),
        teacher,
        digits["train"],
        CONFIG,
        alpha=0.7,
        temperature=4.0,
        evaluation=digits["test"],
    )


def test_distilled_student_learns_from_the_teacher(distilled):
    assert distilled.history[-1].loss < distilled.history[0].loss
    assert distilled.initial_accuracy < 0.3 and distilled.accuracy > 0.4  # chance is 0.1


def test_teacher_and_student_must_agree_on_classes_and_inputs(teacher, digits):
    wide = student_graph()
    wide.outputs[0].shape = [1, 12]
    with pytest.raises(EdgecError, match=r"has shape \[1, 10\] but student output 'logits' has \[1, 12\]"):
        distill(wide, teacher, digits["train"], CONFIG)
    renamed = student_graph()
    renamed.inputs[0].name = "image"
    with pytest.raises(EdgecError, match="teacher and student inputs differ"):
        distill(renamed, teacher, {"image": digits["train"]["input"]}, CONFIG)
    unlabelled = {"input": digits["train"]["input"]}
    with pytest.raises(EdgecError, match="no 'label' array; pass --alpha 1"):
        distill(student_graph(), teacher, unlabelled, CONFIG, alpha=0.7)


def _write(tmp_path, digits, labels=True):
    data = tmp_path / "train.npz"
    arrays = {"input": digits["train"]["input"][:, 0]}
    if labels:
        arrays["label"] = digits["train"]["label"]
    np.savez(data, **arrays)
    return data


def test_cli_distills_without_labels_and_writes_the_student(cli, tmp_path, digits, student_path):
    data = _write(tmp_path, digits, labels=False)
    out = tmp_path / "out" / "student.onnx"
    out.parent.mkdir()
    args = ["distill", "--teacher", str(DIGITS / "digits_cnn.onnx"), "--student", str(student_path)]
    args += ["--data", str(data), "--alpha", "1", "--epochs", "1", "-o", str(out), "--json", "-q"]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["epochs_run"] == 1 and record["stopped"] == "completed"
    trained = onnx.load(str(out))
    initial = onnx.load(str(student_path))
    weight = {t.name: t for t in trained.graph.initializer}["conv1.weight"]
    assert weight.raw_data != {t.name: t for t in initial.graph.initializer}["conv1.weight"].raw_data


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no 'label' array; pass --alpha 1"),
        (["--teacher-is-student"], "is an input model; edgec never overwrites its input"),
        (["--bad-data"], "missing ['input']"),
    ],
)
def test_cli_bad_input_is_one_line_exit_1_and_writes_nothing(
    cli, tmp_path, digits, student_path, extra, message
):
    data = _write(tmp_path, digits, labels=False)
    if "--bad-data" in extra:
        np.savez(data, image=digits["train"]["input"][:, 0])
    out = student_path if "--teacher-is-student" in extra else tmp_path / "out.onnx"
    args = ["distill", "--teacher", str(DIGITS / "digits_cnn.onnx"), "--student", str(student_path)]
    result = cli.invoke(main, [*args, "--data", str(data), "-o", str(out), "-q"])
    assert result.exit_code == 1
    assert result.output.startswith("edgec: error: ") and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.onnx").exists()
