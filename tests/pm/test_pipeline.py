"""The pipeline grammar, named pipelines, and the PassManager's verification and dumps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgec.errors import EdgecError, VerificationError
from edgec.ir import EdgeGraph, op_sequence
from edgec.pm import (
    FixedPoint,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    all_pipelines,
    format_pipeline,
    parse_pipeline,
    register,
)
from edgec.pm import registry as pass_registry
from tests.helpers import make_model, run_pipeline

F = TensorProto.FLOAT


def _relu_model():
    return make_model(
        [
            helper.make_node("Identity", ["x"], ["i"], name="identity"),
            helper.make_node("Relu", ["i"], ["y"], name="relu"),
        ],
        {"x": (F, [2, 3])},
        {"y": (F, [2, 3])},
    )


# ----- grammar ---------------------------------------------------------------------------------


def test_options_are_converted_to_their_field_types():
    (step,) = parse_pipeline("fold-constants{max_bytes=1024, fold_shapes=false}")
    assert step.name == "fold-constants"
    assert step.max_bytes == 1024 and isinstance(step.max_bytes, int)
    assert step.fold_shapes is False
    assert format_pipeline([step]) == "fold-constants{max_bytes=1024,fold_shapes=false}"
    assert parse_pipeline(format_pipeline([step])) == [step]


def test_badly_typed_option_value_is_an_error():
    with pytest.raises(EdgecError, match=r"option fold-constants\{max_bytes\}: 'big' is not an int"):
        parse_pipeline("fold-constants{max_bytes=big}")
    with pytest.raises(EdgecError, match="is not a boolean"):
        parse_pipeline("fold-constants{fold_shapes=maybe}")


def test_unknown_pass_lists_the_available_ones():
    with pytest.raises(EdgecError) as error:
        parse_pipeline("fuse-conv-bn,fuse-everything")
    message = str(error.value)
    assert "unknown pass 'fuse-everything'" in message
    for known in ("fuse-conv-bn", "fold-constants", "eliminate-dead-code", "default"):
        assert known in message


def test_unknown_option_lists_the_pass_options():
    with pytest.raises(
        EdgecError, match="pass 'fold-constants' has no option 'limit'; its options: max_bytes, fold_shapes"
    ):
        parse_pipeline("fold-constants{limit=3}")
    with pytest.raises(EdgecError, match="its options: none"):
        parse_pipeline("fuse-conv-bn{epsilon=1}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fuse-conv-bn{", "unbalanced '{'"),
        ("fuse-conv-bn}", "unbalanced '}'"),
        ("fuse-conv-bn,,fold-constants", "empty item"),
        ("fold-constants{max_bytes}", "write key=value"),
        ("fold-constants{max_bytes=1}x", "options go in braces at the end"),
        ("default{limit=2}", "named pipeline 'default' takes no options"),
    ],
)
def test_bad_syntax_is_a_clear_error(text, expected):
    with pytest.raises(EdgecError, match=expected.replace("{", r"\{").replace("}", r"\}")):
        parse_pipeline(text)


def test_empty_pipeline_is_no_steps():
    assert parse_pipeline("  ") == []


def test_named_default_pipeline_expands_to_a_fixed_point():
    named = all_pipelines()["default"]
    assert named.fixed_point and named.description == "cleanup and fusion to a fixed point"
    steps = parse_pipeline("eliminate-dead-code,default")
    assert steps[0].name == "eliminate-dead-code"
    assert isinstance(steps[1], FixedPoint) and steps[1].name == "default"
    assert [p.spec() for p in steps[1].passes] == named.pipeline.split(",")
    assert format_pipeline(steps) == "eliminate-dead-code,default"


def test_fixed_point_repeats_until_nothing_changes():
    graph, records = run_pipeline("default", _relu_model())
    assert op_sequence(graph) == ["Relu"]
    group = parse_pipeline("default")[0].passes
    # The first round removed the Identity; the second round changed nothing and ended the loop.
    assert len(records) == 2 * len(group)
    assert not any(record.changed for record in records[len(group) :])


# ----- verification and dumps ------------------------------------------------------------------


@dataclass(frozen=True)
class ReluToSigmoid(Pass):
    """Replaces every Relu by a Sigmoid while claiming to be lossless (a deliberate bug)."""

    name: ClassVar[str] = "test-relu-to-sigmoid"
    lossless: ClassVar[bool] = True

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        changed = 0
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "Sigmoid"
                changed += 1
        return PassResult(graph, changed=changed > 0, stats={"replaced": changed})


@pytest.fixture
def wrong_pass():
    register(ReluToSigmoid)
    yield ReluToSigmoid.name
    del pass_registry._PASSES[ReluToSigmoid.name]


def test_verification_catches_a_wrong_lossless_pass(wrong_pass):
    with pytest.raises(
        VerificationError, match=f"pass '{wrong_pass}' is marked lossless but changed output 'y'"
    ):
        run_pipeline(f"eliminate-identity,{wrong_pass}", _relu_model())


def test_without_verification_the_wrong_pass_runs(wrong_pass):
    graph, records = run_pipeline(wrong_pass, _relu_model(), verify=False)
    assert op_sequence(graph) == ["Identity", "Sigmoid"]
    assert records[0].stats == {"replaced": 1} and records[0].max_abs_error is None


def test_verified_records_carry_the_error():
    _, records = run_pipeline("eliminate-identity", _relu_model())
    assert records[0].changed and records[0].max_abs_error == 0.0
    assert records[0].nodes_before == 2 and records[0].nodes_after == 1


def test_dump_after_writes_the_text_form(tmp_path):
    graph, _ = run_pipeline(
        "eliminate-dead-code,eliminate-identity",
        _relu_model(),
        dump_after=frozenset({"eliminate-identity"}),
        dump_dir=tmp_path,
    )
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps == ["002-eliminate-identity.txt"]
    text = (tmp_path / dumps[0]).read_text()
    assert text == graph.text()
    assert "  %y = Relu(%x)  # relu" in text


def test_dump_after_without_a_folder_goes_to_stderr(capsys):
    run_pipeline("eliminate-identity", _relu_model(), dump_after=frozenset({"eliminate-identity"}))
    err = capsys.readouterr().err
    assert err.startswith("// ----- after eliminate-identity -----\ngraph test (opset 17)")


def test_pass_manager_accepts_a_pipeline_string_and_keeps_the_graph_object():
    graph = EdgeGraph.from_onnx(_relu_model())
    run = PassManager("eliminate-identity").run(graph)
    assert run.graph is graph
    assert np.array_equal([r.name for r in run.records], ["eliminate-identity"])
