"""A quiet console: TVM's and the toolchain's messages captured, failed tools quoted briefly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from edgec.errors import ToolchainError
from edgec.ir import format_shape
from edgec.targets.toolchains import relevant_lines, run_tool
from tests.conftest import conv_bn_relu_model

TVM_WARNING = "Set native vector bits"


def _edgec(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # A real process: TVM's C++ logging writes to file descriptor 2, which click's runner does not see.
    return subprocess.run(
        [sys.executable, "-m", "edgec.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_quiet_compile_prints_nothing_and_verbose_shows_tvm(tmp_path: Path) -> None:
    model = tmp_path / "convnet.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    quiet = _edgec("compile", model, "-o", tmp_path / "q", "-t", "cortex-m4", "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("", "")
    loud = _edgec("compile", model, "-o", tmp_path / "v", "-t", "cortex-m4", "-v")
    assert loud.returncode == 0, loud.stderr
    assert TVM_WARNING in loud.stderr
    assert "status: ok" in loud.stdout
    plain = _edgec("compile", model, "-o", tmp_path / "p", "-t", "cortex-m4")
    assert TVM_WARNING not in plain.stderr
    assert all(line.startswith("edgec") for line in plain.stderr.splitlines()), plain.stderr


def test_a_failed_tool_is_quoted_and_logged(tmp_path: Path) -> None:
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return missing_function(); }\n")
    with pytest.raises(ToolchainError) as caught:
        run_tool(["gcc", "-Werror", str(source), "-o", str(tmp_path / "a.out")], what="linking a.out")
    message = str(caught.value)
    assert "missing_function" in message
    assert str(source) + " -o" not in message  # the command line is in the log, not on the console
    log = Path(re.search(r"full output: (\S+)", message).group(1))
    assert log.read_text().startswith("$ gcc -Werror ")


def test_relevant_lines_prefer_errors() -> None:
    output = "note: a\nnote: b\nld: region `FLASH' overflowed by 12 bytes\ncollect2: error: ld returned 1\n"
    assert relevant_lines(output) == [
        "ld: region `FLASH' overflowed by 12 bytes",
        "collect2: error: ld returned 1",
    ]
    assert relevant_lines("one\ntwo\n", limit=1) == ["two"]
    assert relevant_lines("") == ["(no output)"]


def test_shapes_show_names_and_unknown_dims() -> None:
    assert format_shape([None, 576]) == "?x576"
    assert format_shape(["batch", 3, 8, 8]) == "batchx3x8x8"
    assert format_shape(None) == "?"
    assert format_shape([1, -1, ""]) == "1x?x?"
