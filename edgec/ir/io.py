"""Loading and saving ONNX models safely: external data confined to the model's folder, checked
models, atomic writes that never leave a half-written file and never overwrite the input."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from edgec.errors import EdgecError
from edgec.ir.graph import EdgeGraph

# Protobuf cannot serialize a message of 2 GiB or more; above this, weights go to a side file.
_EXTERNAL_DATA_THRESHOLD = 1 << 30


def _check_external_locations(model: onnx.ModelProto, base_dir: Path) -> bool:
    """Refuses external data outside ``base_dir`` or missing; returns whether the model has any."""
    root = base_dir.resolve()
    external = False
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        external = True
        info = _external_info(tensor)
        location = Path(info.location)
        target = (root / location).resolve()
        if location.is_absolute() or not target.is_relative_to(root):
            raise EdgecError(
                f"tensor '{tensor.name}' stores its data at '{info.location}', outside the model's "
                f"folder {root}; external data must live beside the model"
            )
        if not target.is_file():
            raise EdgecError(
                f"tensor '{tensor.name}' stores its data in '{info.location}', which does not exist in {root}"
            )
    return external


def _external_info(tensor: onnx.TensorProto) -> external_data_helper.ExternalDataInfo:
    """The tensor's external-data record; a malformed one (negative offset, text length) is an error."""
    try:
        return external_data_helper.ExternalDataInfo(tensor)
    except ValueError as exc:
        raise EdgecError(f"tensor '{tensor.name}' has malformed external data: {exc}") from None


def external_data_files(path: Path) -> list[Path]:
    """The external-data files a model refers to (for build-system dependency files)."""
    model = _parse(Path(path))
    files = set()
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            files.add(path.parent / _external_info(tensor).location)
    return sorted(p.resolve() for p in files)


def _read(path: Path) -> bytes:
    if not path.exists():
        raise EdgecError(f"model '{path}' does not exist")
    if not path.is_file():
        raise EdgecError(f"model '{path}' is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EdgecError(f"cannot read model '{path}': {exc.strerror or exc}") from None


def _parse(path: Path, data: bytes | None = None) -> onnx.ModelProto:
    """The model proto (of the file's bytes ``data`` when given) without its external data; an
    ``EdgecError`` if it is not ONNX."""
    try:
        model = onnx.load_model_from_string(_read(path) if data is None else data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise EdgecError(f"'{path}' is not a valid ONNX model (protobuf parse failed: {exc})") from None
    if not model.graph.node and not model.graph.output:
        raise EdgecError(f"'{path}' is not an ONNX model (it has no graph)")
    return model


def read_model(path: str | Path) -> onnx.ModelProto:
    """Reads and checks an ONNX file and its external data; every failure is an ``EdgecError``."""
    path = Path(path)
    data = _read(path)
    model = _parse(path, data)
    external = _check_external_locations(model, path.parent)
    try:
        # The checker reads the file's bytes: checking the proto would serialize every weight
        # again. With external data it reads the path, to find the data files beside the model.
        onnx.checker.check_model(str(path) if external else data)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgecError(f"'{path}' fails the ONNX checker: {first_line}") from None
    del data
    external_data_helper.load_external_data_for_model(model, str(path.parent))
    for tensor in model.graph.initializer:
        _check_tensor_size(tensor, path)
    _check_value_types(model, path)
    return model


def _check_value_types(model: onnx.ModelProto, path: Path) -> None:
    """Refuses element types ONNX does not define, and graph inputs and outputs without one (the
    checker lets both through; they would fail deep in the import or in TVM)."""
    graph = model.graph
    ends = {v.name for v in (*graph.input, *graph.output)}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if not value.type.HasField("tensor_type"):
            continue
        dtype = value.type.tensor_type.elem_type
        if dtype == onnx.TensorProto.UNDEFINED and value.name not in ends:
            continue  # an intermediate tensor whose type inference will find
        try:
            onnx.helper.tensor_dtype_to_np_dtype(dtype)
        except KeyError:
            kind = "graph input or output" if value.name in ends else "tensor"
            raise EdgecError(
                f"'{path}': {kind} '{value.name}' has element type {dtype}, which ONNX does not define"
                + (" (UNDEFINED)" if dtype == onnx.TensorProto.UNDEFINED else "")
            ) from None


# ONNX element types stored two to a byte.
_PACKED_TYPES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1}


def _check_tensor_size(tensor: onnx.TensorProto, path: Path) -> None:
    """Refuses an initializer whose stored data does not hold its declared shape: the ONNX checker
    refuses too little data in the file, not too much, nor external data; numpy would fail much
    later, deep inside a pass."""
    where = f"'{path}': initializer '{tensor.name}'"
    if tensor.data_type == onnx.TensorProto.STRING:
        return
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    except (KeyError, ValueError):
        raise EdgecError(f"{where} has the unknown element type {tensor.data_type}") from None
    count = 1
    for d in tensor.dims:
        count *= d  # Python ints: a huge declared shape cannot overflow
    packed = tensor.data_type in _PACKED_TYPES
    if tensor.HasField("raw_data"):
        stored, expected = len(tensor.raw_data), (count + 1) // 2 if packed else count * itemsize
    else:
        values = len(getattr(tensor, field))
        per_element = (
            2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        )
        stored, expected = values, (count + 1) // 2 if packed else count * per_element
    if stored != expected:
        unit = "bytes" if tensor.HasField("raw_data") else "values"
        raise EdgecError(
            f"{where} declares shape {list(tensor.dims)} but stores {stored} {unit}, not {expected}"
        )


def load(path: str | Path) -> EdgeGraph:
    """Loads an ONNX file into an ``EdgeGraph``."""
    return EdgeGraph.from_onnx(read_model(path))


# Staging siblings of an output NAME are ``.NAME.<pid>.<8 hex digits>`` (``.NAME.<pid>.old-<hex>``
# for the previous build while it is swapped out): the pid says whether the edgec that made one
# still runs.
_STAGING_SUFFIX = re.compile(r"(\d+)\.(?:old-)?[0-9a-f]{8}")


def _staging_sibling(path: Path, kind: str = "") -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{kind}{secrets.token_hex(4)}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:  # a killed process its parent has not reaped yet is a zombie: gone for our purpose
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def remove_stale_staging(path: Path) -> list[Path]:
    """Removes the staging siblings of ``path`` that a killed edgec left behind (their process is
    gone); returns them. Those of running processes, and names edgec does not make, stay.

    A reused pid keeps a stale folder until that process ends too: never the other way round.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = (
            _STAGING_SUFFIX.fullmatch(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
        )
        if match is None or _process_alive(int(match[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path, *, directory: bool = False):
    """Yields a temporary sibling of ``path``; on success renames it over ``path``.

    On failure the temporary is removed, so a reader never sees a half-written file or folder; one
    left behind by a killed edgec is removed by the next ``atomic_path`` of the same ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(path)
        temporary = _staging_sibling(path)
        if directory:
            temporary.mkdir(mode=0o700)
        else:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise EdgecError(f"cannot write '{path}': {exc.strerror or exc}") from None
    # The staging sibling is created owner-only; a build output gets the usual umask permissions.
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod((0o777 if directory else 0o666) & ~umask)
    try:
        yield temporary
        if directory and path.exists():
            backup = _staging_sibling(path, "old-")
            path.rename(backup)
            temporary.rename(path)
            shutil.rmtree(backup)
        else:
            os.replace(temporary, path)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    """Writes ``model`` atomically; weights go to ``<name>.data`` beside it when too large."""
    path = Path(path)
    if model.ByteSize() < _EXTERNAL_DATA_THRESHOLD:
        with atomic_path(path) as temporary:
            temporary.write_bytes(model.SerializeToString())
        return
    data_name = f"{path.name}.data"
    remove_stale_staging(path)
    folder = _staging_sibling(path)
    try:
        folder.mkdir(mode=0o700)
    except OSError as exc:
        raise EdgecError(f"cannot write '{path}': {exc.strerror or exc}") from None
    try:
        staged = folder / path.name
        onnx.save_model(
            onnx.ModelProto.FromString(model.SerializeToString()),
            str(staged),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=0,
        )
        # Data first, then the model that points at it: each rename is atomic.
        os.replace(folder / data_name, path.parent / data_name)
        os.replace(staged, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save(graph: EdgeGraph, path: str | Path) -> None:
    """Saves an ``EdgeGraph`` as ONNX, atomically."""
    save_model(graph.to_onnx(), path)
