"""What the README shows users keeps working: the quickstart commands and the CI entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def _quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "the quickstart has a code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _quickstart_commands()
    assert commands == ["./scripts/quickstart.sh", "./scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci.splitlines()[-1]


@pytest.mark.slow
def test_quickstart_compiles_the_shipped_model(tmp_path) -> None:
    env = {**os.environ, "EDGEC_SKIP_SETUP": "1"}
    result = subprocess.run(
        [str(REPO / "scripts" / "quickstart.sh"), "-o", str(tmp_path / "digits"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["target"]["name"] == "x86"
    accuracy = manifest["error"]["accuracy"]
    assert accuracy["samples"] == 450
    assert accuracy["artifact"] == accuracy["original"] > 0.98
    assert manifest["error"]["artifact_vs_original"]["max_abs"] < 1e-4


def test_python_example_in_readme_runs(tmp_path) -> None:
    block = README.split("## Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    digits = REPO / "examples" / "digits" / "digits_cnn.onnx"
    code = block.replace('"model.onnx"', repr(str(digits))).replace('"build/"', repr(str(tmp_path / "b")))
    exec(compile(code, "README.md", "exec"), {})
