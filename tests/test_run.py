"""``edgec run``: one sample, or a dataset in one run of the target, outputs in the same layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec.verify import run_onnx
from tests.helpers import DIGITS
from tests.test_cli import assert_user_error, invoke


@pytest.fixture(scope="module")
def digits_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from click.testing import CliRunner

    build = tmp_path_factory.mktemp("run") / "build"
    assert invoke(CliRunner(), "compile", DIGITS / "digits_cnn.onnx", "-o", build, "-q").exit_code == 0
    return build


def _reference(images: np.ndarray) -> np.ndarray:
    model = onnx.load(DIGITS / "digits_cnn.onnx")
    return np.stack([run_onnx(model, {"input": image[None]})["logits"][0] for image in images])


def test_one_sample_keeps_the_output_shapes(cli, digits_build: Path, tmp_path: Path) -> None:
    image = np.load(DIGITS / "digits_test.npz")["input"][:1]  # [1, 1, 8, 8]: exactly the input
    np.savez(tmp_path / "one.npz", input=image)
    result = invoke(cli, "run", digits_build, "--inputs", tmp_path / "one.npz", "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], _reference(image), atol=1e-5, rtol=0)


def test_a_dataset_runs_in_one_go_in_its_own_layout(cli, digits_build: Path, tmp_path: Path) -> None:
    """The shipped test set as it is ([450, 1, 8, 8], stacked on the batch axis; labels ignored)
    gives [450, 10]; the same images with an explicit sample axis give [450, 1, 10]."""
    images = np.load(DIGITS / "digits_test.npz")["input"]
    expected = _reference(images)
    result = invoke(
        cli, "run", digits_build, "--inputs", DIGITS / "digits_test.npz", "-o", tmp_path / "a.npz"
    )
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "a.npz")["logits"], expected, atol=1e-5, rtol=0)
    np.savez(tmp_path / "samples.npz", input=images[:5, None])
    result = invoke(cli, "run", digits_build, "--inputs", tmp_path / "samples.npz", "--repeat", "3", "--json")
    report = json.loads(result.output)
    assert report["outputs"] == {"logits": [5, 1, 10]}
    assert 0 < report["latency_ms"]["min"] <= report["latency_ms"]["median"]


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((4, 1, 7, 8), np.float32), "expects float32[1, 1, 8, 8] (one sample) or N samples of it"),
        (np.zeros((0, 1, 8, 8), np.float32), "hold 0 samples"),
        (np.zeros((4, 1, 8, 8), np.float64), "is float64[4, 1, 8, 8]"),
    ],
)
def test_bad_inputs(cli, digits_build: Path, tmp_path: Path, array: np.ndarray, fragment: str) -> None:
    np.savez(tmp_path / "bad.npz", input=array)
    result = invoke(cli, "run", digits_build, "--inputs", tmp_path / "bad.npz", "-o", tmp_path / "out.npz")
    assert_user_error(result, fragment)
    assert not (tmp_path / "out.npz").exists()
