"""ONNX I/O: checked loading, external data confined to the model's folder, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

import edgec.ir.io as io
from edgec.errors import EdgecError
from edgec.ir import atomic_path, external_data_files, load, read_model, save
from tests.conftest import conv_bn_relu_model


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    graph = load_from(conv_bn_relu_model(), tmp_path / "in.onnx")
    save(graph, tmp_path / "out.onnx")
    assert read_model(tmp_path / "out.onnx").graph.node
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_large_models_are_saved_with_external_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(io, "_EXTERNAL_DATA_THRESHOLD", 100)
    graph = load_from(conv_bn_relu_model(), tmp_path / "in.onnx")
    save(graph, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    assert external_data_files(tmp_path / "big.onnx") == [(tmp_path / "big.onnx.data").resolve()]
    reloaded = load(tmp_path / "big.onnx")
    assert len(reloaded.nodes) == len(graph.nodes)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_external_data_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(
        conv_bn_relu_model(), str(path), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    (tmp_path / "w.bin").unlink()
    with pytest.raises(EdgecError, match=r"w\.bin.*does not exist"):
        read_model(path)


def load_from(model: onnx.ModelProto, path: Path):
    onnx.save_model(model, str(path))
    return load(path)


def test_stale_staging_siblings_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """Only ``.NAME.<pid>.<hex>`` (and ``.old-`` backups) whose process is gone go; a running
    edgec's staging folder, other outputs' and unknown names stay."""
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".build.{dead_pid}.0123abcd", tmp_path / f".build.{dead_pid}.old-89abcdef"]
    for folder in stale:
        (folder / "partial").mkdir(parents=True)
    stale_file = tmp_path / f".model.onnx.{dead_pid}.00ff00ff"
    stale_file.write_bytes(b"half")
    kept = [
        tmp_path / f".build.{os.getpid()}.0123abcd",  # a running process (this one)
        tmp_path / f".build.5.{dead_pid}.0123abcd",  # staging of the output 'build.5'
        tmp_path / ".build.k2j3h4g5",  # an older edgec's name: its owner is unknown
        tmp_path / f".build.{dead_pid}.notours",
    ]
    for folder in kept:
        folder.mkdir()
    assert sorted(io.remove_stale_staging(tmp_path / "build")) == sorted(stale)
    with atomic_path(tmp_path / "model.onnx") as temporary:
        temporary.write_bytes(b"new")
    assert not stale_file.exists() and (tmp_path / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ["model.onnx"])
