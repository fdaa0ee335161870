"""How many threads a TVM shared library runs with: all physical cores unless told otherwise.

TVM's runtime starts its thread pool with ``TVM_NUM_THREADS``, else ``OMP_NUM_THREADS``, else half
the hardware threads (it assumes two per core): one thread on a 2-core machine without SMT, half
the machine. edgec's libraries default to the physical cores of the machine they run on instead,
or to the count chosen at compile time (``edgec compile --threads N``, recorded in the manifest);
either environment variable still wins. Two mechanisms carry that:

* ``edgec_threads.c``, linked into every library, sets ``TVM_NUM_THREADS`` when the library is
  loaded (only if neither variable is set), for programs that load it with their own TVM runtime;
* :func:`configure_thread_pool`, called by edgec's runner, resizes a pool that already started.

Nothing here imports edgec: the artifact runner may run without the package.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["THREAD_VARIABLES", "configure_thread_pool", "physical_cores", "requested_threads"]

# The environment variables TVM's runtime reads for its pool size, in its order.
THREAD_VARIABLES = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")
# runtime.config_threadpool's kSpecifyThreadShareAllCore: the workers may run on every listed CPU
# (no pinning), and unlike the default mode the count may exceed the pool's starting size.
_SHARE_ALL_CORES = -3
_SYS_CPU = Path("/sys/devices/system/cpu")


def physical_cores() -> int:
    """Distinct physical cores (package, core id) among the CPUs this process may run on."""
    cores = set()
    for cpu in sorted(os.sched_getaffinity(0)):
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology in sysfs (some containers): count the CPU
    return max(1, len(cores))


def requested_threads(compiled: int = 0) -> tuple[int, str]:
    """The thread count a library runs with here, and where it comes from.

    Args:
        compiled: the count recorded at compile time (``--threads``), 0 for the default.

    Returns:
        ``(threads, source)``: from ``TVM_NUM_THREADS``/``OMP_NUM_THREADS`` when set (a
        positive integer), else ``compiled``, else :func:`physical_cores`.

    Raises:
        ValueError: a thread variable that is not a positive integer.
    """
    for name in THREAD_VARIABLES:
        value = os.environ.get(name)
        if value:
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value!r} is not a positive number of threads")
            return int(value), name
    if compiled:
        return compiled, "compiled with --threads"
    return physical_cores(), "physical cores"


def configure_thread_pool(compiled: int = 0) -> int:
    """Sizes TVM's thread pool in this process to :func:`requested_threads` and returns the count."""
    import tvm

    threads, _ = requested_threads(compiled)
    cpus = [str(cpu) for cpu in sorted(os.sched_getaffinity(0))]
    tvm.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, threads, cpus)
    return threads
