"""``edgec tune``: MetaSchedule over a model's kernels into a tuning database (the CLI command).

    edgec tune MODEL --trials N --db DIR [--target x86] [--threads N]

``edgec compile --db DIR`` then applies the database's best schedules (``--tune N`` does both).
"""

from __future__ import annotations

from typing import Any

import click

from edgec.cli_options import compile_options, console_option, import_options, pipeline_options


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
