"""Runs a TVM shared library (the x86 artifact) on a batch of samples, with TVM's runtime only.

This module runs in edgec's ``artifact`` worker process (:mod:`edgec.isolation`), where a crash of
the native code cannot take edgec down. The worker loads it from its file, without the ``edgec``
package: it imports numpy and TVM (in the worker, TVM's runtime library alone, as on a device),
and nothing of edgec, whose import would cost a third of the worker's startup.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import numpy as np


def _load_vm(lib_path: pathlib.Path) -> Any:
    import tvm
    from tvm.runtime.vm import VirtualMachine  # in TVM's runtime-only mode too (no tvm.relax)

    return VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())


def _flatten(value: Any, out: list[np.ndarray]) -> list[np.ndarray]:
    """Relax outputs (a tensor or nested tuples of tensors) as numpy arrays, in order."""
    if hasattr(value, "numpy"):
        out.append(value.numpy())
    else:
        # Tuples, and tvm_ffi containers (Array): sequences without numpy(); anything else is a bug.
        for item in list(value):
            _flatten(item, out)
    return out


def _to_device(inputs: list[np.ndarray]) -> list[Any]:
    import tvm

    dev = tvm.cpu()
    # np.asarray keeps 0-d arrays 0-d; np.ascontiguousarray would make a scalar input 1-d, which
    # the VM refuses ("expect Tensor with ndim 0 but get 1").
    return [tvm.runtime.tensor(np.asarray(x, order="C"), dev) for x in inputs]


def _configure_threads(compiled: int) -> None:
    """Sizes TVM's thread pool for a library compiled with ``compiled`` threads (0: the physical
    cores), with :func:`.threads.configure_thread_pool` loaded from its file like this module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "edgec_tvm_threads", pathlib.Path(__file__).with_name("threads.py")
    )
    threads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(threads)
    threads.configure_thread_pool(compiled)


def run_shared_library(
    lib_path: pathlib.Path, inputs: list[np.ndarray], repeat: int = 0, threads: int = 0
) -> tuple[list[np.ndarray], list[float]]:
    """Runs a library built by :func:`edgec.targets.tvm.build.build_shared_library` on a batch of
    samples on the host CPU, loading it once for the whole batch.

    Args:
        lib_path: The ``.so``.
        inputs: One array per model input, in the model's input order, each with a leading
            sample axis (``[N, *input shape]``).
        repeat: How many timed runs of the first sample (after one warm-up run), 0 for none. Its
            inputs are copied to the device once; each timing covers one call of ``main``
            including its output allocation, as a user of the library would see it.
        threads: The thread count it was compiled with (0: the physical cores; the environment's
            ``TVM_NUM_THREADS``/``OMP_NUM_THREADS`` win, see :mod:`.threads`).

    Returns:
        The outputs as numpy arrays with the same leading sample axis (tuple outputs flattened
        in order), and the seconds of each timed run.
    """
    main = _load_vm(lib_path)["main"]
    _configure_threads(threads)
    count = len(inputs[0]) if inputs else 1
    per_sample = [_flatten(main(*_to_device([x[index] for x in inputs])), []) for index in range(count)]
    outputs = [np.stack(values) for values in zip(*per_sample, strict=True)]
    times: list[float] = []
    if repeat:
        args = _to_device([x[0] for x in inputs])
        main(*args)
        for _ in range(repeat):
            start = time.perf_counter()
            main(*args)
            times.append(time.perf_counter() - start)
    return outputs, times
