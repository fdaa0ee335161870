"""The ``edgec`` command line: compile, optimize, inspect, check, run, passes, targets, distill, tune.

Exit codes: 0 ok; 1 user error (``edgec: error: ...``, no traceback); 2 usage; 3 a budget or
accuracy gate failed (the artifact is still written and its manifest says why).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgec.cli_distill import distill as _distill_command
from edgec.cli_lists import passes as _passes_command
from edgec.cli_lists import targets as _targets_command
from edgec.cli_options import (
    SHAPE_HELP,
    compile_options,
    console_option,
    import_options,
    pipeline_options,
    rpc_options,
)
from edgec.cli_tune import rpc_server as _rpc_server_command
from edgec.cli_tune import tune as _tune_command
from edgec.errors import BudgetError, EdgecError
from edgec.report import echo_json


def _fail(error: EdgecError) -> None:
    click.echo(f"edgec: error: {error}", err=True)
    sys.exit(error.exit_code)


class _Group(click.Group):
    """Turns every ``EdgecError`` into ``edgec: error: ...`` and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgecError as error:
            _fail(error)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgec", prog_name="edgec")
def main() -> None:
    """edgec shrinks ONNX models and compiles them with TVM for x86, Cortex-A and Cortex-M."""


@main.command()
@click.argument("model", type=click.Path())
@click.option("--target", "-t", help="compilation target (see 'edgec targets'); default x86")
@click.option("--output", "-o", "output", required=True, type=click.Path(), help="build directory")
@import_options
@pipeline_options
@click.option("--inputs", type=click.Path(), help=".npz inputs for measuring the artifact's error")
@click.option("--eval", "eval", type=click.Path(), help="labelled .npz dataset for measuring accuracy")
@click.option(
    "--max-accuracy-drop", type=float, help="largest accepted accuracy drop on --eval (0.01 = 1 point)"
)
@click.option("--flash-budget", type=int, help="flash budget in bytes (overrides the board's)")
@click.option("--ram-budget", type=int, help="RAM budget in bytes (overrides the board's)")
@click.option(
    "--rounding",
    metavar="MODE",
    help="requantization rounding of int8 kernels: single (default) or double (TFLite's)",
)
@click.option(
    "--no-micro-kernels",
    "no_micro_kernels",
    is_flag=True,
    help="schedule int8 kernels without the target's micro-kernels (vpdpbusd, vpmaddwd, sdot, sadalp, "
    "SMLAD), to compare",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="threads of the built library (x86); default: the physical cores of the machine it runs on",
)
@click.option("--db", type=click.Path(), help="tuning database folder (edgec tune): apply its best schedules")
@click.option(
    "--tune", type=click.IntRange(min=1), metavar="N", help="tune N MetaSchedule trials into --db first"
)
@rpc_options
@click.option(
    "--no-sparse-weights",
    "no_sparse_weights",
    is_flag=True,
    help="store every weight dense, also where a sparse format would be smaller (for comparisons)",
)
@click.option(
    "--no-memory-planning",
    "no_memory_planning",
    is_flag=True,
    help="Cortex-M/c: no conv+pool fusion, row bands or padding merges (every layer output whole)",
)
@click.option("--name", help="C prefix of the generated API (<name>_run); default: from the file name")
@click.option("--depfile", type=click.Path(dir_okay=False), help="write a Make-format dependency file")
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success (warnings and errors only)")
@console_option
def compile(model: str, output: str, as_json: bool, quiet: bool, **params: Any) -> None:
    """Compile MODEL for a target into a build directory with a manifest."""
    from edgec.compile import compile_model
    from edgec.progress import Progress
    from edgec.report import print_manifest, write_depfile

    depfile = params.pop("depfile", None)
    options = compile_options(params)
    try:
        result = compile_model(model, output, options, Progress(quiet=quiet or as_json))
        manifest = result.manifest
    except BudgetError as error:
        from edgec.manifest import read_manifest

        manifest = read_manifest(Path(output))
        if depfile:
            write_depfile(Path(depfile), Path(output), Path(model), options)
        if as_json or not quiet:
            print_manifest(manifest, as_json)
        _fail(error)
    if depfile:
        write_depfile(Path(depfile), Path(output), Path(model), options)
    if as_json or not quiet:  # --quiet: nothing on success (the manifest holds the report)
        print_manifest(manifest, as_json)


@main.command()
@click.argument("model", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(), help="optimized ONNX file")
@import_options
@pipeline_options
@click.option("--json", "as_json", is_flag=True, help="print per-pass records as JSON")
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success (warnings and errors only)")
@console_option
def optimize(model: str, output: str, as_json: bool, quiet: bool, **params: Any) -> None:
    """Run the import path and a pass pipeline on MODEL and save the optimized ONNX."""
    from edgec.compile import optimize_model
    from edgec.progress import Progress

    options = compile_options(params)
    prepared = optimize_model(model, output, options, Progress(quiet=quiet or as_json))
    records = [
        {
            "name": r.name,
            "changed": r.changed,
            "nodes_before": r.nodes_before,
            "nodes_after": r.nodes_after,
            "stats": r.stats,
        }
        for r in prepared.run.records
    ]
    if as_json:
        echo_json({"pipeline": prepared.pipeline, "passes": records, "output": str(output)})
        return
    if quiet:
        return
    for record in records:
        click.echo(
            f"{record['name']:<24} {record['nodes_before']:>5} → {record['nodes_after']:<5} "
            f"{json.dumps(record['stats'], separators=(',', ':'))}"
        )
    click.echo(f"wrote {output} ({len(prepared.original.nodes)} → {len(prepared.graph.nodes)} nodes)")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--input-shape", multiple=True, help=SHAPE_HELP)
@click.option("--groups", is_flag=True, help="print the channel dependency groups channel pruning uses")
@click.option("--memory", is_flag=True, help="MODEL is a build directory: print its memory timeline")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@console_option
def inspect(model: str, input_shape: tuple[str, ...], groups: bool, memory: bool, as_json: bool) -> None:
    """Print per-node MACs, parameters and output sizes of MODEL (or its channel groups; with
    --memory, the memory timeline of a build directory)."""
    from edgec.ir import EdgeGraph, fix_input_shapes, graph_cost, infer_shapes, parse_input_shape, read_model

    if memory:
        from edgec.manifest import read_manifest
        from edgec.report import print_memory

        manifest = read_manifest(Path(model))
        if as_json:
            echo_json(manifest.get("memory"))
            return
        print_memory(manifest)
        return

    graph = EdgeGraph.from_onnx(read_model(model))
    fix_input_shapes(graph, dict(map(parse_input_shape, input_shape)))
    infer_shapes(graph)
    if groups:
        from edgec.groups_report import channel_groups, format_groups

        report = channel_groups(graph)
        echo_json(report) if as_json else click.echo(format_groups(report), nl=False)
        return
    cost = graph_cost(graph)
    if as_json:
        echo_json(cost.as_dict())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("node", "op", "MACs", "params", "weight bytes", "output bytes", box=None)
    for node in cost.nodes:
        table.add_row(
            node.name,
            node.op,
            f"{node.macs:,}",
            f"{node.params:,}",
            f"{node.weight_bytes:,}",
            f"{node.output_bytes:,}",
        )
    table.add_row(
        "total", "", f"{cost.macs:,}", f"{cost.params:,}", f"{cost.weight_bytes:,}", "", style="bold"
    )
    Console(highlight=False).print(table)


@main.command()
@click.argument("build_dir", type=click.Path())
@click.option(
    "--inputs",
    required=True,
    type=click.Path(),
    help=".npz with one array per model input: one sample, or many on a leading axis",
)
@click.option("--output", "-o", type=click.Path(), help="write outputs to this .npz")
@click.option("--repeat", type=click.IntRange(min=0), default=0, help="time N runs (min/median latency)")
@click.option("--json", "as_json", is_flag=True)
@console_option
def run(build_dir: str, inputs: str, output: str | None, repeat: int, as_json: bool) -> None:
    """Run a built artifact on inputs from a .npz file (one sample or a dataset, in one run)."""
    import numpy as np

    from edgec.ir import atomic_path
    from edgec.run import run_build, run_threads

    outputs, times = run_build(build_dir, Path(inputs), repeat)
    threads = run_threads(build_dir)
    if output:
        with atomic_path(Path(output)) as temporary, temporary.open("wb") as handle:
            np.savez(handle, **outputs)
    latency = {"min": 1e3 * min(times), "median": 1e3 * float(np.median(times))} if times else None
    if as_json:
        shapes = {k: list(v.shape) for k, v in outputs.items()}
        echo_json({"outputs": shapes, "latency_ms": latency, "threads": threads})
        return
    for name, value in outputs.items():
        click.echo(f"{name}: {value.dtype}{list(value.shape)}")
    if latency:
        click.echo(
            f"latency over {repeat} runs on {threads} thread{'s' if threads > 1 else ''}: "
            f"min {latency['min']:.3f} ms, median {latency['median']:.3f} ms"
        )


@main.command()
@click.argument("model", type=click.Path())
@click.option("--target", "-t", help="target to check for (default x86)")
@import_options
@click.option("--json", "as_json", is_flag=True)
@console_option
def check(model: str, as_json: bool, **params: Any) -> None:
    """Report, without building, whether every node of MODEL can be compiled for a target."""
    from edgec.check import check_model
    from edgec.compile import IMPORT_PIPELINE, load_model
    from edgec.targets import get_target

    options = compile_options(params)
    get_target(options.target)
    graph = load_model(Path(model), options).graph
    report = check_model(graph, options.target, pipeline=IMPORT_PIPELINE if options.simplify else "")
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo("\n".join(report.lines()))
    if not report.ok:
        sys.exit(1)


@main.command("cmake-dir")
def cmake_dir() -> None:
    """Print the folder of edgec's CMake package (EdgecConfig.cmake, EdgecModel.cmake)."""
    click.echo(Path(__file__).resolve().parent / "cmake")


# Commands in their own modules: distillation (edgec/cli_distill.py), the listings (edgec/cli_lists.py),
# tuning (edgec/cli_tune.py).
main.add_command(_distill_command)
main.add_command(_tune_command)
main.add_command(_rpc_server_command)
main.add_command(_passes_command)
main.add_command(_targets_command)


if __name__ == "__main__":
    main()
