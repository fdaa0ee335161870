"""The distill pass: a pre-pass with a teacher file, and recovery from the model as loaded."""

from __future__ import annotations

import pytest

from edgec.errors import EdgecError
from edgec.ir import op_sequence
from edgec.pm import PassContext, PassManager
from edgec.train.export import accuracy_of
from tests.helpers import DIGITS, covers
from tests.train.conftest import digits, student_graph, teacher  # noqa: F401 (fixtures)


@covers("distill", kind="structural")
@covers("distill", kind="numeric")
def test_distill_pass_trains_the_student_in_place_of_its_weights(digits):  # noqa: F811
    student = student_graph()
    before = op_sequence(student)
    ctx = PassContext(training=digits["train"], evaluation=digits["test"])
    pipeline = f"distill{{teacher={DIGITS / 'digits_cnn.onnx'},epochs=3,learning_rate=0.01}}"
    run = PassManager(pipeline, ctx).run(student)
    stats = run.records[-1].stats
    assert op_sequence(run.graph) == before  # structure kept, weights trained
    assert stats["accuracy_before"] < 0.3 and stats["accuracy"] > 0.4  # chance is 0.1
    test = digits["test"]
    assert accuracy_of(run.graph, {"input": test["input"]}, test["label"]) == pytest.approx(
        stats["accuracy"], abs=1e-6
    )


@covers("distill", kind="negative")
def test_distill_without_teacher_needs_the_model_as_loaded_and_training_data(digits):  # noqa: F811
    with pytest.raises(EdgecError, match="needs training data: pass --train"):
        PassManager("distill", PassContext()).run(student_graph())
    with pytest.raises(EdgecError, match=r"name one: distill\{teacher=model.onnx\}"):
        PassManager("distill", PassContext(training=digits["train"])).run(student_graph())
