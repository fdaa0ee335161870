"""The build manifest (``manifest.json``): what was built, from what, how, how big, how exact.

Everything in it is deterministic (same inputs and options, same bytes): wall-clock times go to
``timings.json`` beside it instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgec.errors import EdgecError

MANIFEST = "manifest.json"
TIMINGS = "timings.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stable(value: Any) -> Any:
    """JSON-able, with floats rounded to 6 significant digits so reruns print the same bytes."""
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if not np.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, Path):
        return value.name
    if isinstance(value, np.ndarray):
        return _stable(value.tolist())
    return value


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(_stable(data), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(dumps(data))


def file_hashes(build_dir: Path) -> dict[str, str]:
    """sha256 of every file in the build directory except the manifest and timings."""
    return {
        str(p.relative_to(build_dir)): sha256_file(p)
        for p in sorted(build_dir.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, TIMINGS)
    }


def read_manifest(build_dir: Path) -> dict[str, Any]:
    path = build_dir / MANIFEST
    if not build_dir.is_dir():
        raise EdgecError(f"build directory '{build_dir}' does not exist")
    if not path.is_file():
        raise EdgecError(f"'{build_dir}' is not an edgec build directory (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgecError(f"'{path}' is not valid JSON: {exc}") from None
    if data.get("schema") != SCHEMA_VERSION:
        raise EdgecError(f"'{path}' has manifest schema {data.get('schema')}, edgec reads {SCHEMA_VERSION}")
    return data
