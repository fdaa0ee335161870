"""``edgec tune``: the kernels of a model's legal graph tuned into a database, without building."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgec.config import CompileOptions
from edgec.errors import EdgecError
from edgec.progress import Progress

__all__ = [
    "RpcBoards",
    "parse_address",
    "remote_boards",
    "tune_before_build",
    "tune_model",
    "with_threads_and_database",
]


def with_threads_and_database(target: Any, options: CompileOptions) -> Any:
    """``target`` with the thread count (``--threads``) and the tuning database (``--db``) of
    ``options``; an error for a target without a TVM thread pool or TVM kernels to tune."""
    if options.threads:
        if not any(f.name == "threads" for f in dataclasses.fields(target)):
            raise EdgecError(
                f"--threads sets the thread pool of a TVM runtime library; target '{target.name}' "
                "builds runtime-free C, which runs on the caller's thread"
            )
        target = dataclasses.replace(target, threads=options.threads)
    if options.tune and not options.db:
        raise EdgecError("--tune N keeps what it learns in a database: add --db DIR")
    if options.rpc_key and not options.rpc:
        raise EdgecError("--rpc-key names boards at a TVM tracker: add --rpc HOST:PORT")
    if options.rpc and not options.tune:
        raise EdgecError("--rpc measures tuning trials on boards: add --tune N (or run edgec tune)")
    remote_boards(options)  # a malformed --rpc fails before any work
    if options.db:
        if not any(f.name == "tuning_database" for f in dataclasses.fields(target)):
            raise EdgecError(f"target '{target.name}' is not built through TVM; --db has nothing to tune")
        target = dataclasses.replace(target, tuning_database=str(options.db))
    return target


def tune_model(
    model: str | Path, options: CompileOptions, trials: int, progress: Progress | None = None
) -> Any:
    """Runs the import path, the pipeline and the target's legalization, then tunes the kernels
    of the legal graph into ``options.db`` (``edgec tune``); returns the tuning report."""
    from edgec.compile import legalize, prepare, target_of

    progress = progress or Progress(quiet=True)
    options = options.merged({"tune": trials})
    target = target_of(options)
    prepared = prepare(Path(model), options, progress)
    graph = legalize(prepared, target, progress).graph
    return target.tune(graph, trials, seed=options.seed, progress=progress, remote=remote_boards(options))


@dataclass(frozen=True)
class RpcBoards:
    """Boards registered with a TVM RPC tracker at ``host:port`` under the device key ``key``."""

    host: str
    port: int
    key: str


def parse_address(address: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair, or an error naming the option."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdgecError(f"{what} '{address}' is not HOST:PORT (e.g. 127.0.0.1:9190)")
    return host, int(port)


def remote_boards(options: CompileOptions) -> RpcBoards | None:
    """The boards ``--rpc HOST:PORT --rpc-key KEY`` names (key default: the target's name), or
    ``None`` to measure on this machine."""
    if not options.rpc:
        return None
    return RpcBoards(*parse_address(options.rpc, "--rpc"), options.rpc_key or options.target)


def tune_before_build(
    target: Any, graph: Any, options: CompileOptions, progress: Progress, timings: dict[str, Any]
) -> dict[str, Any]:
    """``compile --tune N``: tunes the legal graph's kernels into the database before the build;
    returns the report for the manifest and adds the seconds to ``timings``."""
    import time

    start = time.perf_counter()
    remote = remote_boards(options)
    report = target.tune(graph, options.tune, seed=options.seed, progress=progress, remote=remote).as_dict()
    timings["tune"] = time.perf_counter() - start
    return report
