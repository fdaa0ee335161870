"""Config files: edgec.toml, [tool.edgec] in pyproject.toml, precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgec.config import CompileOptions, find_config, load_config
from edgec.errors import EdgecError


def test_edgec_toml_values_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "edgec.toml").write_text(
        'target = "x86-64-v3"\npipeline = "fuse-conv-bn"\nverify = true\ncalib = "data/calib.npz"\n'
        '[input-shapes]\nx = "1x3x8x8"\n[freeze-inputs]\nsr = 16000\nmode = "m.npy"\n'
    )
    options = load_config(find_config(tmp_path))
    assert options.target == "x86-64-v3" and options.pipeline == "fuse-conv-bn" and options.verify
    assert options.input_shapes == {"x": (1, 3, 8, 8)}
    assert options.calib == tmp_path.resolve() / "data" / "calib.npz"
    assert options.freeze_inputs == {"sr": "16000", "mode": str(tmp_path.resolve() / "m.npy")}


def test_pyproject_table_is_found_only_when_present(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[tool.edgec]\ntarget = "x86"\nseed = 4\n')
    assert load_config(find_config(tmp_path)).seed == 4


def test_flags_override_the_file() -> None:
    base = CompileOptions(target="x86-64-v3", seed=1)
    merged = base.merged({"seed": 7, "target": None})
    assert merged.seed == 7 and merged.target == "x86-64-v3"
    assert base.seed == 1  # merging makes a copy


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("speed = 3\n", "unknown key 'speed'"),
        ("verify = 'yes'\n", "'verify' must be true or false"),
        ("seed = -1\n", "'seed' must be a non-negative integer"),
        ("[input-shapes]\nx = 'ax2'\n", "bad shape"),
        ("input-shapes = 3\n", "must be a table"),
        ("target = [\n", "not valid TOML"),
        ("rounding = 'nearest'\n", "rounding 'nearest' must be one of single, double"),
    ],
)
def test_bad_config_values(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "edgec.toml"
    path.write_text(text)
    with pytest.raises(EdgecError, match=fragment.replace("(", r"\(")):
        load_config(path)


def test_quantize_sugar_expands_to_the_pipeline() -> None:
    options = CompileOptions(pipeline="default", quantize="int8", calibration="mse", max_accuracy_drop=0.01)
    assert options.full_pipeline() == (
        "import,default,quantize{scheme=int8,calibration=mse,budget=0.01,budget_metric=accuracy}"
    )
    assert CompileOptions(quantize="fp16-compute").full_pipeline() == (
        "import,default,quantize{scheme=fp16,compute=float16}"
    )
