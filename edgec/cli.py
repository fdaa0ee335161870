"""The ``edgec`` command line: compile, optimize, inspect, check, run, passes, targets, distill.

Exit codes: 0 ok; 1 user error (``edgec: error: ...``, no traceback); 2 usage; 3 a budget or
accuracy gate failed (the artifact is still written and its manifest says why).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from edgec.cli_distill import distill as _distill_command
from edgec.cli_lists import passes as _passes_command
from edgec.cli_lists import targets as _targets_command
from edgec.errors import BudgetError, EdgecError
from edgec.report import echo_json

_SHAPE_HELP = "fix an input's shape, e.g. input=1x3x224x224 (repeatable)"


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


def _options(ctx_params: dict[str, Any]):
    """Compile options: defaults < config file (``--config`` or found in the cwd) < flags."""
    from edgec.config import CompileOptions, find_config, load_config
    from edgec.ir import parse_input_shape

    config_path = ctx_params.pop("config", None)
    config = Path(config_path) if config_path else find_config(Path.cwd())
    base = load_config(config) if config else CompileOptions()
    base.config_file = config
    overrides: dict[str, Any] = {}
    shapes = ctx_params.pop("input_shape", ())
    if shapes:
        overrides["input_shapes"] = {**base.input_shapes, **dict(map(parse_input_shape, shapes))}
    freezes = ctx_params.pop("freeze_input", ())
    if freezes:
        from edgec.ir.freeze import parse_freeze

        # Options hold the VALUE text (load_model parses it against the input); parse here only to
        # fail early on a malformed spec or a missing file. Storing the parsed value instead would
        # turn a .npy array into its repr.
        specs = {}
        for spec in freezes:
            name, _ = parse_freeze(spec)
            specs[name] = spec.partition("=")[2].strip()
        overrides["freeze_inputs"] = {**base.freeze_inputs, **specs}
    if ctx_params.pop("no_micro_kernels", False):
        overrides["micro_kernels"] = False
    if ctx_params.pop("no_sparse_weights", False):
        overrides["sparse_weights"] = False
    if ctx_params.pop("no_memory_planning", False):
        overrides["memory_planning"] = False
    no_simplify = ctx_params.pop("no_simplify", False)
    if no_simplify:
        overrides["simplify"] = False
    if ctx_params.pop("verify_each", False):
        overrides["verify"] = True
    dump_after = ctx_params.pop("dump_after", ())
    if dump_after:
        overrides["dump_after"] = tuple(dump_after)
    for key in (
        "target",
        "pipeline",
        "seed",
        "inputs",
        "eval",
        "calib",
        "flash_budget",
        "ram_budget",
        "quantize",
        "calibration",
        "max_accuracy_drop",
        "name",
        "rounding",
        "prune",
        "prune_channels",
        "prune_nm",
        "train",
        "epochs",
    ):
        if key in ctx_params and ctx_params[key] is not None:
            value = ctx_params.pop(key)
            overrides[key] = Path(value) if key in ("inputs", "eval", "calib", "train") else value
    if ctx_params.pop("qat", False):
        overrides["qat"] = True
    return base.merged(overrides)


def _console(function):
    """``--verbose``: show what TVM, the toolchain and Python warnings wrote; hidden otherwise."""

    @functools.wraps(function)
    def wrapper(*args: Any, verbose: bool = False, **kwargs: Any) -> Any:
        from edgec.console import captured_console, detach_native_stderr

        try:
            with captured_console() as captured:
                return function(*args, **kwargs)
        finally:
            if verbose and captured.text:
                click.echo(captured.text, err=True, nl=False)
            detach_native_stderr()

    return click.option("--verbose", "-v", is_flag=True, help="also show TVM's and the toolchain's messages")(
        wrapper
    )


def _import_options(function):
    """Options shared by every command that imports a model."""
    decorators = [
        click.option("--input-shape", multiple=True, help=_SHAPE_HELP),
        click.option(
            "--freeze-input", multiple=True, help="turn an input into a constant: NAME=VALUE or NAME=file.npy"
        ),
        click.option("--no-simplify", is_flag=True, help="skip the import path (onnxslim, control flow)"),
        click.option("--config", type=click.Path(dir_okay=False), help="config file (default: edgec.toml)"),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _pipeline_options(function):
    decorators = [
        click.option(
            "--pipeline", "-p", help="pass pipeline, e.g. 'default' or 'fuse-conv-bn,fold-constants'"
        ),
        click.option("--verify-each", is_flag=True, help="check every lossless pass against onnxruntime"),
        click.option("--dump-after", multiple=True, metavar="PASS", help="print the graph after PASS"),
        click.option("--seed", type=int, help="seed of random verification inputs"),
        click.option("--calib", type=click.Path(), help=".npz calibration dataset"),
        click.option(
            "--quantize",
            metavar="SCHEME",
            help="quantize after the pipeline: int8, int8-dynamic, weight-int8|int4|int2|binary, fp16, "
            "fp16-compute (float16 arithmetic: cortex-a55, cortex-m55)",
        ),
        click.option(
            "--calibration", metavar="METHOD", help="int8 calibration: minmax, percentile, entropy, mse"
        ),
        click.option("--prune", type=float, metavar="SPARSITY", help="zero the smallest weights: 0.5 = 50%"),
        click.option("--prune-channels", type=float, metavar="RATIO", help="remove channels: 0.3 = 30%"),
        click.option("--prune-nm", metavar="N:M", help="keep N of every M weights along the reduction axis"),
        click.option("--qat", is_flag=True, help="fine-tune --quantize with quantization-aware training"),
        click.option("--train", type=click.Path(), help=".npz training dataset (--qat, distill passes)"),
        click.option("--epochs", type=click.IntRange(min=1), help="training epochs of --qat (default 10)"),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgec", prog_name="edgec")
def main() -> None:
    """edgec shrinks ONNX models and compiles them with TVM for x86, Cortex-A and Cortex-M."""


@main.command()
@click.argument("model", type=click.Path())
@click.option("--target", "-t", help="compilation target (see 'edgec targets'); default x86")
@click.option("--output", "-o", "output", required=True, type=click.Path(), help="build directory")
@_import_options
@_pipeline_options
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
    help="schedule int8 kernels without the target's micro-kernels (vpmaddwd, SMLAD), for comparisons",
)
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
@_console
def compile(model: str, output: str, as_json: bool, quiet: bool, **params: Any) -> None:
    """Compile MODEL for a target into a build directory with a manifest."""
    from edgec.compile import compile_model
    from edgec.progress import Progress
    from edgec.report import print_manifest, write_depfile

    depfile = params.pop("depfile", None)
    options = _options(params)
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
@_import_options
@_pipeline_options
@click.option("--json", "as_json", is_flag=True, help="print per-pass records as JSON")
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success (warnings and errors only)")
@_console
def optimize(model: str, output: str, as_json: bool, quiet: bool, **params: Any) -> None:
    """Run the import path and a pass pipeline on MODEL and save the optimized ONNX."""
    from edgec.compile import optimize_model
    from edgec.progress import Progress

    options = _options(params)
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
@click.option("--input-shape", multiple=True, help=_SHAPE_HELP)
@click.option("--groups", is_flag=True, help="print the channel dependency groups channel pruning uses")
@click.option("--memory", is_flag=True, help="MODEL is a build directory: print its memory timeline")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_console
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
@_console
def run(build_dir: str, inputs: str, output: str | None, repeat: int, as_json: bool) -> None:
    """Run a built artifact on inputs from a .npz file (one sample or a dataset, in one run)."""
    import numpy as np

    from edgec.ir import atomic_path
    from edgec.run import run_build

    outputs, times = run_build(build_dir, Path(inputs), repeat)
    if output:
        with atomic_path(Path(output)) as temporary, temporary.open("wb") as handle:
            np.savez(handle, **outputs)
    latency = {"min": 1e3 * min(times), "median": 1e3 * float(np.median(times))} if times else None
    if as_json:
        echo_json({"outputs": {k: list(v.shape) for k, v in outputs.items()}, "latency_ms": latency})
        return
    for name, value in outputs.items():
        click.echo(f"{name}: {value.dtype}{list(value.shape)}")
    if latency:
        click.echo(
            f"latency over {repeat} runs: min {latency['min']:.3f} ms, median {latency['median']:.3f} ms"
        )


@main.command()
@click.argument("model", type=click.Path())
@click.option("--target", "-t", help="target to check for (default x86)")
@_import_options
@click.option("--json", "as_json", is_flag=True)
@_console
def check(model: str, as_json: bool, **params: Any) -> None:
    """Report, without building, whether every node of MODEL can be compiled for a target."""
    from edgec.check import check_model
    from edgec.compile import IMPORT_PIPELINE, load_model
    from edgec.targets import get_target

    options = _options(params)
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


# Commands in their own modules: distillation (edgec/cli_distill.py), the listings (edgec/cli_lists.py).
main.add_command(_distill_command)
main.add_command(_passes_command)
main.add_command(_targets_command)


if __name__ == "__main__":
    main()
