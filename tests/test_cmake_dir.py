"""The CMake package ships inside edgec: ``edgec cmake-dir`` finds it, wheels carry it, and
``find_package(Edgec CONFIG)`` brings in ``edgec_add_model``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgec.cli import main
from tests.helpers import REPO
from tests.targets.cortex_helpers import needs_tools

FILES = ("EdgecConfig.cmake", "EdgecModel.cmake", "arm-none-eabi.cmake")


def _cmake_dir(cli) -> Path:
    result = cli.invoke(main, ["cmake-dir"], catch_exceptions=False)
    assert result.exit_code == 0
    return Path(result.output.strip())


def test_cmake_dir_holds_the_package(cli) -> None:
    folder = _cmake_dir(cli)
    assert folder.is_absolute()
    assert all((folder / name).is_file() for name in FILES)


@needs_tools("cmake")
def test_find_package_defines_edgec_add_model(cli, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(uses_edgec NONE)\n"
        "find_package(Edgec REQUIRED CONFIG)\n"
        'if(NOT COMMAND edgec_add_model)\n  message(FATAL_ERROR "no edgec_add_model")\nendif()\n'
        'message(STATUS "edgec runtime: ${EDGEC_RUNTIME_DIR}")\n'
    )
    done = subprocess.run(
        [
            "cmake",
            "-S",
            str(project),
            "-B",
            str(tmp_path / "build"),
            f"-DEdgec_DIR={_cmake_dir(cli)}",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "edgec runtime: /" in done.stdout
    missing = subprocess.run(
        ["cmake", "-S", str(project), "-B", str(tmp_path / "build2"), f"-DEdgec_DIR={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0  # the check above can fail


@pytest.mark.slow
def test_the_wheel_carries_the_cmake_package(tmp_path: Path) -> None:
    # Build from a copy: setuptools leaves build/ and *.egg-info in the source folder.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("edgec", "passes", "targets"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("edgec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"edgec/cmake/{name}" for name in FILES} <= names
