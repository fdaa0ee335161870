"""The pruning sugar (``--prune``, ``--prune-channels``, ``--prune-nm``, config keys) and
``edgec inspect --groups``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec.config import CompileOptions, load_config
from edgec.errors import EdgecError
from tests.helpers import DIGITS
from tests.test_cli import assert_user_error, invoke

DIGITS_MODEL = DIGITS / "digits_cnn.onnx"


def test_pruning_sugar_expands_between_the_pipeline_and_quantize():
    options = CompileOptions(
        pipeline="default", prune_channels=0.3, prune_nm="2:4", prune=0.5, quantize="int8"
    )
    assert options.full_pipeline() == (
        "import,default,prune-channels{ratio=0.3},prune-nm{n=2,m=4},prune-magnitude{sparsity=0.5},"
        "quantize{scheme=int8}"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prune-channels = 1.0", "'prune-channels' must be a fraction in [0, 1)"),
        ("prune = true", "'prune' must be a fraction in [0, 1)"),
        ('prune-nm = "2-4"', "'prune-nm' must be N:M such as 2:4"),
    ],
)
def test_bad_pruning_config_values(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "edgec.toml"
    path.write_text(text)
    with pytest.raises(
        EdgecError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        load_config(path)


def test_optimize_with_prune_channels_writes_a_smaller_model(cli, tmp_path: Path) -> None:
    out = tmp_path / "pruned.onnx"
    # A scalar-float target: channel counts are not rounded to vector lanes.
    config = tmp_path / "edgec.toml"
    config.write_text('target = "cortex-m4"\n')
    flags = ("--prune-channels", "0.5", "--config", config, "--json")
    result = invoke(cli, "optimize", DIGITS_MODEL, "-o", out, *flags)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.output)
    assert report["pipeline"].endswith("prune-channels{ratio=0.5}")
    stats = report["passes"][-1]["stats"]
    assert stats["round_to"] == 1 and stats["round_to_from"] == "target cortex-m4"
    assert stats["mac_reduction"] > 0.5
    # The import path names nodes after their outputs; fuse-conv-bn folded the BatchNorms.
    layers = {row["node"]: row for row in stats["layers"]}
    assert layers["conv2_out"]["in_channels"] == [16, 8] and layers["conv2_out"]["out_channels"] == [32, 16]
    model = onnx.load(out)
    weights = {t.name: t for t in model.graph.initializer}
    convs = [list(weights[n.input[1]].dims) for n in model.graph.node if n.op_type == "Conv"]
    assert convs == [[8, 1, 3, 3], [16, 8, 3, 3], [16, 16, 3, 3]]


def test_optimize_with_prune_and_prune_nm(cli, tmp_path: Path) -> None:
    out = tmp_path / "sparse.onnx"
    result = invoke(
        cli, "optimize", DIGITS_MODEL, "-o", out, "--prune-nm", "2:4", "--prune", "0.75", "--json"
    )
    assert result.exit_code == 0, result.stderr
    passes = {record["name"]: record["stats"] for record in json.loads(result.output)["passes"]}
    assert passes["prune-nm"]["sparsity"][1] > 0.45 and passes["prune-magnitude"]["sparsity"][1] == 0.75


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--prune-channels", "1.2", "'prune-channels' must be a fraction in [0, 1)"),
        ("--prune", "-0.5", "'prune' must be a fraction in [0, 1)"),
        ("--prune-nm", "2-4", "'prune-nm' must be N:M such as 2:4"),
    ],
)
def test_bad_pruning_flags_are_user_errors(cli, tmp_path: Path, flag: str, value: str, fragment: str) -> None:
    out = tmp_path / "out.onnx"
    assert_user_error(invoke(cli, "optimize", DIGITS_MODEL, "-o", out, flag, value), fragment)
    assert not out.exists()


def test_inspect_groups_text_and_json(cli) -> None:
    text = invoke(cli, "inspect", DIGITS_MODEL, "--groups")
    assert text.exit_code == 0, text.stderr
    assert "group 0: 16 units, 16 prunable; origins conv1" in text.output
    assert "  normalizes BatchNormalization   bn1  (16 of conv1_out)" in text.output
    assert "left alone: 'logits' is a model output (its shape stays)" in text.output
    report = json.loads(invoke(cli, "inspect", DIGITS_MODEL, "--groups", "--json").output)
    assert [g["units"] for g in report["groups"]] == [16, 32, 32, 10]
    assert report["prunable"] == 80


@pytest.mark.slow
def test_compile_with_prune_channels_records_every_layer(cli, tmp_path: Path) -> None:
    build = tmp_path / "build"
    calib = DIGITS / "digits_calib.npz"
    # x86 rounds channel counts to its float lanes (8 or 16): 32 channels halve, 16 stay.
    flags = ("--prune-channels", "0.5", "--calib", calib, "--json")
    result = invoke(cli, "compile", DIGITS_MODEL, "-o", build, *flags)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.output)
    record = next(r for r in manifest["passes"] if r["name"] == "prune-channels")
    assert record["cost"]["macs"][1] < record["cost"]["macs"][0]
    layers = {row["node"]: row for row in record["stats"]["layers"]}
    assert layers["conv3_out"]["in_channels"] == [32, 16] and layers["fc"]["in_channels"] == [32, 16]
    assert record["stats"]["compensation"] == "calibration data"
    assert manifest["graph"]["macs"] == record["cost"]["macs"][1]
    x = dict(np.load(DIGITS / "digits_test.npz"))["input"][:1]
    np.savez(tmp_path / "x.npz", input=x)
    assert invoke(cli, "run", build, "--inputs", tmp_path / "x.npz").exit_code == 0
