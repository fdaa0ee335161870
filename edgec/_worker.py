"""The worker process of :mod:`edgec.isolation`: serves requests read from stdin until its end.

Run as a script, not as ``edgec._worker``: importing the ``edgec`` package loads onnx and the IR,
half a second that an onnxruntime worker does not need. Only the standard library is imported at
the top; numpy and onnxruntime on first use, other modules when a ``call`` request names them.

Requests:
    ``("open", key, model)``: makes sure an onnxruntime session for the model identified by
        ``key`` exists, ``model`` being its bytes, its file's path, or ``None`` (then the reply is
        ``("missing",)`` unless the session is cached); returns the output names.
    ``("run", key, feeds, stacked)``: runs the session; with ``stacked`` the feeds hold a leading
        sample axis, the model runs once per sample and the outputs are stacked.
    ``("call", "module:function", args)``: calls a function (an artifact runner) and returns its
        result; ``module`` is a module name, or the path of a ``.py`` file to load without its
        package (preloaded modules are named the same way).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import signal
import sys
import traceback
from collections import OrderedDict
from typing import Any

# Sessions kept for reuse, least recently used first; bounded in number and in model bytes.
MAX_SESSIONS = 8
MAX_SESSION_BYTES = 512 << 20
# Per model digest: (session, output names, model bytes).
_sessions: OrderedDict[str, tuple[Any, tuple[str, ...], int]] = OrderedDict()
# Modules loaded from their files, by path.
_files: dict[str, Any] = {}


class UserError(Exception):
    """A failure to report as the ``EdgecError`` subclass named ``kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _ort_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "Fail",
        "InvalidArgument",
        "InvalidGraph",
        "NoSuchFile",
        "NotImplemented",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "EPFail",
    )
    return (RuntimeError, ValueError, *(getattr(state, n) for n in names if hasattr(state, n)))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _open(key: str, model: bytes | str | None) -> tuple[str, ...] | None:
    if key in _sessions:
        _sessions.move_to_end(key)
        return _sessions[key][1]
    if model is None:
        return None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Basic optimizations only: the reference should compute the graph as written, not a fused
    # variant of it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = 2
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except _ort_errors() as error:
        raise UserError("EdgecError", f"onnxruntime cannot load the model: {_first_line(error)}") from None
    names = tuple(output.name for output in session.get_outputs())
    size = len(model) if isinstance(model, bytes) else os.path.getsize(model)
    _sessions[key] = (session, names, size)
    while len(_sessions) > 1 and (
        len(_sessions) > MAX_SESSIONS or sum(size for *_, size in _sessions.values()) > MAX_SESSION_BYTES
    ):
        _sessions.popitem(last=False)
    return names


def _run(key: str, feeds: dict[str, Any], stacked: bool) -> dict[str, Any] | None:
    if key not in _sessions:
        return None
    import numpy as np

    session, output_names, _ = _sessions[key]
    names = list(output_names)
    try:
        if not stacked:
            return dict(zip(names, session.run(names, feeds), strict=True))
        count = len(next(iter(feeds.values())))
        outputs: dict[str, list[Any]] = {name: [] for name in names}
        for index in range(count):
            # np.asarray: indexing a sample of a scalar input gives a numpy scalar, not a 0-d array.
            values = session.run(names, {k: np.asarray(v[index]) for k, v in feeds.items()})
            for name, value in zip(names, values, strict=True):
                outputs[name].append(value)
    except _ort_errors() as error:
        raise UserError("EdgecError", f"onnxruntime failed to run the model: {_first_line(error)}") from None
    return {name: np.stack(values) for name, values in outputs.items()}


def _module(name: str) -> Any:
    """A module by name, or loaded from a ``.py`` file (once) without importing its package."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    if name not in _files:
        spec = importlib.util.spec_from_file_location(f"_edgec_worker_module_{len(_files)}", name)
        assert spec is not None and spec.loader is not None, name
        _files[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_files[name])
    return _files[name]


def _call(target: str, args: tuple) -> Any:
    module_name, _, function = target.rpartition(":")
    try:
        return getattr(_module(module_name), function)(*args)
    except Exception as error:
        # The edgec errors a runner raises (missing library, bad inputs) are the user's to read.
        if type(error).__module__ == "edgec.errors":
            raise UserError(type(error).__name__, str(error)) from None
        raise


def _serve(request: tuple) -> tuple:
    operation, *args = request
    handlers = {"open": _open, "run": _run, "call": _call}
    try:
        result = handlers[operation](*args)
    except UserError as error:
        return ("error", error.kind, str(error))
    except Exception:
        return ("bug", traceback.format_exc())
    return ("missing",) if result is None and operation != "call" else ("ok", result)


def main() -> None:
    replies = os.fdopen(os.dup(1), "wb")
    # Native code that prints to stdout must not corrupt the replies: fd 1 becomes stderr.
    os.dup2(2, 1)
    # Ctrl-C reaches the whole process group; the parent decides what it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import resource

        # A crash is reported by the parent; a core file would only litter the user's folder.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ImportError, ValueError, OSError):
        pass
    requests = sys.stdin.buffer
    hello = pickle.load(requests)
    sys.path[:] = [entry for entry in hello["path"] if entry != os.path.dirname(__file__)]
    for module in hello["without"]:
        sys.modules[module] = None  # a None entry makes importing it raise ImportError
    for module in hello["preload"]:
        _module(module)
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            # The parent is done (or gone): nothing is left to flush, and tearing down TVM and
            # onnxruntime costs a noticeable fraction of a second.
            os._exit(0)
        try:
            reply = pickle.dumps(_serve(request), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a result that does not pickle is a bug of the caller, not a crash
            reply = pickle.dumps(("bug", traceback.format_exc()))
        replies.write(reply)
        replies.flush()


if __name__ == "__main__":
    main()
