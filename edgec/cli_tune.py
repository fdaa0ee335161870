"""``edgec tune``: MetaSchedule over a model's kernels into a tuning database (the CLI command),
and ``edgec rpc-server``, an emulated Cortex-A board for tuning over TVM RPC.

    edgec tune MODEL --trials N --db DIR [--target x86] [--threads N]
    edgec tune MODEL --target cortex-a55 --trials N --db DIR --rpc HOST:PORT [--rpc-key KEY]
    edgec rpc-server --tracker HOST:PORT --target cortex-a55 [--key KEY]

``edgec compile --db DIR`` then applies the database's best schedules (``--tune N`` does both).
"""

from __future__ import annotations

import contextlib
from typing import Any

import click

from edgec.cli_options import (
    compile_options,
    console_option,
    import_options,
    pipeline_options,
    rpc_options,
)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--target", "-t", help="compilation target (see 'edgec targets'); default x86")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    required=True,
    help="MetaSchedule search trials for the model (defaults measured besides)",
)
@click.option("--db", required=True, type=click.Path(), help="tuning database folder (created, resumable)")
@click.option(
    "--threads", type=click.IntRange(min=1), help="threads the kernels are tuned for (default: cores)"
)
@rpc_options
@import_options
@pipeline_options
@click.option("--json", "as_json", is_flag=True, help="print the tuning report as JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@console_option
def tune(model: str, trials: int, as_json: bool, quiet: bool, **params: Any) -> None:
    """Tune MODEL's kernels for a target with MetaSchedule into a database (edgec compile --db)."""
    from edgec.progress import Progress
    from edgec.report import print_tune_report
    from edgec.tune import tune_model

    report = tune_model(model, compile_options(params), trials, Progress(quiet=quiet or as_json))
    print_tune_report(report, as_json)


@click.command("rpc-server")
@click.option("--tracker", required=True, metavar="HOST:PORT", help="the TVM RPC tracker to register with")
@click.option("--target", "-t", default="cortex-a53", show_default=True, help="the Cortex-A core to emulate")
@click.option("--key", help="device key at the tracker (edgec tune --rpc-key); default: the target")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="port to listen on (default: any)")
def rpc_server(tracker: str, target: str, key: str | None, host: str, port: int) -> None:
    """Serve as an emulated Cortex-A board for edgec tune --rpc (development and tests).

    Registers with a TVM tracker and runs each session's kernels under qemu-aarch64 with TVM's
    aarch64 runtime: tuning over RPC works end to end without a board, but the timings are
    emulated time (correctness, not a board's speed). One session at a time: start one server per
    emulated board. Runs until interrupted.
    """
    import logging
    import signal
    import sys

    from edgec.targets import get_target
    from edgec.targets.rpc_server import qemu_board_command, serve
    from edgec.tune import parse_address

    # One line per session on stderr: who was served, how long it took.
    logging.basicConfig(level=logging.INFO, format="edgec rpc-server: %(message)s")
    board = get_target(target)
    command = qemu_board_command(board)
    # Killed (SIGTERM) like interrupted: the session's qemu child is ended on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def ready(listening: int) -> None:
        click.echo(f"serving {board.name} as key '{key or board.name}' on {host}:{listening}", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        serve(
            parse_address(tracker, "--tracker"), key or board.name, command, host=host, port=port, ready=ready
        )
