"""The options the ``edgec`` commands share (edgec/cli.py, edgec/cli_tune.py): model import, pass
pipeline, the captured console (``--verbose``), and the merge of flags over a config file into
:class:`edgec.config.CompileOptions`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

SHAPE_HELP = "fix an input's shape, e.g. input=1x3x224x224 (repeatable)"


def compile_options(ctx_params: dict[str, Any]):
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
        "threads",
        "db",
        "tune",
        "rpc",
        "rpc_key",
    ):
        if key in ctx_params and ctx_params[key] is not None:
            value = ctx_params.pop(key)
            overrides[key] = Path(value) if key in ("inputs", "eval", "calib", "train", "db") else value
    if ctx_params.pop("qat", False):
        overrides["qat"] = True
    return base.merged(overrides)


def import_options(function):
    """Options shared by every command that imports a model."""
    decorators = [
        click.option("--input-shape", multiple=True, help=SHAPE_HELP),
        click.option(
            "--freeze-input", multiple=True, help="turn an input into a constant: NAME=VALUE or NAME=file.npy"
        ),
        click.option("--no-simplify", is_flag=True, help="skip the import path (onnxslim, control flow)"),
        click.option("--config", type=click.Path(dir_okay=False), help="config file (default: edgec.toml)"),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def pipeline_options(function):
    """Options shared by every command that runs a pass pipeline."""
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


def rpc_options(function):
    """Where tuning trials are measured: boards registered with a TVM RPC tracker."""
    decorators = [
        click.option(
            "--rpc",
            metavar="HOST:PORT",
            help="measure tuning trials on boards registered with this TVM RPC tracker (Cortex-A targets)",
        ),
        click.option("--rpc-key", metavar="KEY", help="the boards' key at the tracker (default: the target)"),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def console_option(function):
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
