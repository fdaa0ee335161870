"""The CMake module and the Makefile example build a Cortex-M4 firmware around an edgec model and
recompile the model exactly when it changes (edgec's --depfile), with byte-identical results."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgec.targets import get_target
from edgec.targets.runners import qemu_system_command, run_emulator
from tests.helpers import REPO
from tests.targets.cortex_helpers import DIGITS_ONNX, needs_tools

pytestmark = needs_tools("arm-none-eabi-gcc", "qemu-system-arm", "cmake", "make")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _touch_later(path: Path) -> None:
    """Make ``path`` newer than everything built so far (file systems with coarse timestamps)."""
    time.sleep(1.1)
    os.utime(path)


def _run_firmware(image: Path, cwd: Path) -> str:
    target = get_target("cortex-m4")
    return run_emulator(qemu_system_command(target.machine, target.qemu_cpu, image), cwd, 60, "firmware")


def test_cmake_module_rebuilds_the_model_only_when_it_changes(tmp_path):
    model = tmp_path / "digits_cnn.onnx"
    shutil.copyfile(DIGITS_ONNX, model)
    build = tmp_path / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO / "examples" / "cmake"),
            "-B",
            str(build),
            f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'edgec' / 'cmake' / 'arm-none-eabi.cmake'}",
            f"-DDIGITS_MODEL={model}",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        check=True,
        capture_output=True,
    )

    def cmake_build() -> str:
        done = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "edgec: compiling digits_cnn" in cmake_build()
    library = build / "edgec_models" / "digits" / "libdigits_cnn.a"
    first = _digest(library)
    assert "predicted class" in _run_firmware(build / "digits_firmware.elf", tmp_path)

    assert "edgec: compiling" not in cmake_build()  # nothing changed: no model rebuild
    _touch_later(model)
    assert "edgec: compiling digits_cnn" in cmake_build()
    assert _digest(library) == first  # same inputs, byte-identical library


def test_makefile_example_rebuilds_the_model_only_when_it_changes(tmp_path):
    model = tmp_path / "digits_cnn.onnx"
    shutil.copyfile(DIGITS_ONNX, model)
    build = tmp_path / "build"
    command = [
        "make",
        "-C",
        str(REPO / "examples" / "make"),
        f"BUILD={build}",
        f"MODEL={model}",
        f"PYTHON={sys.executable}",
    ]

    def make() -> str:
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "edgec.cli compile" in make()
    header = build / "digits_cnn" / "digits_cnn.h"
    first = _digest(header)
    assert "edgec.cli compile" not in make()
    _touch_later(model)
    assert "edgec.cli compile" in make()
    assert _digest(header) == first
    assert "predicted class" in _run_firmware(build / "firmware.elf", tmp_path)


def test_depfile_lists_the_model(tmp_path):
    """The CLI flag the build systems rely on: the rule names the manifest and the model."""
    from click.testing import CliRunner

    from edgec.cli import main

    out = tmp_path / "out"
    depfile = tmp_path / "out.d"
    result = CliRunner().invoke(
        main,
        ["compile", str(DIGITS_ONNX), "-t", "cortex-m4", "-o", str(out), "--depfile", str(depfile), "-q"],
    )
    assert result.exit_code == 0, result.output
    assert depfile.read_text().startswith(f"{(out / 'manifest.json').resolve()}: {DIGITS_ONNX.resolve()}")


@pytest.fixture(autouse=True)
def _no_stray_build_in_examples():
    """The examples must not leave build output inside the repository."""
    yield
    assert not (REPO / "examples" / "make" / "build").exists()
