"""Compile options and where they come from: defaults < config file < command line.

The config file is ``edgec.toml`` (top-level keys) or the ``[tool.edgec]`` table of
``pyproject.toml``, found in the current folder unless ``--config`` names one. Keys are the
fields of :class:`CompileOptions` (``input-shapes`` and ``input_shapes`` both work).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgec.errors import EdgecError
from edgec.ir import parse_shape

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

DEFAULT_TARGET = "x86"
DEFAULT_PIPELINE = "default"
# ``--quantize`` sugar for float16 compute (targets with fp16 arithmetic).
FP16_COMPUTE = "fp16-compute"
# Requantization roundings of the integer kernels (edgec.targets.integer.fixed_point.requantize).
ROUNDINGS = ("single", "double")


@dataclass
class CompileOptions:
    """Everything that decides what ``edgec compile`` builds.

    Attributes:
        target: registered target name.
        pipeline: pipeline string run after the import path (``default``: cleanup + fusion).
        input_shapes: fixed shapes for inputs with symbolic dimensions.
        freeze_inputs: inputs turned into constants (scalar, or a path to .npy/.npz).
        simplify: run the import path (onnxslim simplification, control flow, recurrent ops).
        verify: check every lossless pass against onnxruntime.
        seed: seed of random verification inputs.
        inputs: .npz with one set of inputs for measuring the artifact's error.
        eval: labelled .npz dataset (``label`` key) for measuring accuracy.
        calib: .npz calibration dataset for passes that need one.
        dump_after: pass names after which the graph is printed.
        flash_budget, ram_budget: byte budgets that override the target's board budgets.
        name: the C prefix of the generated API (``<name>_run``); default: the model's file name.
        quantize: quantization scheme appended to the pipeline (``int8``, ``weight-int4``, ...).
        calibration: calibration method for ``quantize`` (``minmax``, ``entropy``, ...).
        max_accuracy_drop: largest accepted top-1 accuracy drop on ``eval`` (a fraction); it
            keeps sensitive layers in float and fails the build (exit 3) when still missed.
        rounding: requantization rounding of the integer kernels, ``single`` or ``double``
            (TFLite's; default: the target's, ``single``).
        prune: unstructured sparsity appended to the pipeline (``prune-magnitude``), 0.5 = 50%.
        prune_channels: channel ratio appended to the pipeline (``prune-channels``), 0.3 = 30%.
        prune_nm: N:M sparsity appended to the pipeline (``prune-nm``), e.g. ``2:4``.
        micro_kernels: use the target's int8 micro-kernels (vpdpbusd, vpmaddwd, sdot, sadalp, SMLAD)
            where it has them.
        threads: threads of a TVM runtime library (x86); 0 = the physical cores of the machine
            it runs on (``TVM_NUM_THREADS`` at run time still wins).
        db: a tuning database folder; its best records for the target, CPU and threads replace
            the default schedules of the kernels they cover.
        tune: MetaSchedule trials to run into ``db`` before building (0: none).
        rpc: ``HOST:PORT`` of a TVM RPC tracker whose boards measure the tuning trials (Cortex-A).
        rpc_key: the device key of those boards at the tracker (default: the target's name).
        sparse_weights: store weights with zeros sparse where that is smaller (the target's formats).
        memory_planning: on targets whose budget is RAM (Cortex-M, ``c``), fuse convolutions with
            their pools, plan row bands of the first stages under the RAM budget and keep padded
            inputs out of memory; off, every layer's output is a tensor (for comparisons).
        train: .npz training dataset (``label`` optional) for passes that train (``qat``,
            ``distill``).
        qat: fine-tune the ``quantize`` scheme with quantization-aware training on ``train``.
        epochs: training epochs of ``--qat``.
        config_file: the config file these options came from (for dependency files).
    """

    target: str = DEFAULT_TARGET
    pipeline: str = DEFAULT_PIPELINE
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    freeze_inputs: dict[str, str] = field(default_factory=dict)
    simplify: bool = True
    verify: bool = False
    seed: int = 0
    inputs: Path | None = None
    eval: Path | None = None
    calib: Path | None = None
    dump_after: tuple[str, ...] = ()
    flash_budget: int | None = None
    ram_budget: int | None = None
    name: str | None = None
    quantize: str | None = None
    calibration: str | None = None
    max_accuracy_drop: float | None = None
    rounding: str | None = None
    prune: float | None = None
    prune_channels: float | None = None
    prune_nm: str | None = None
    micro_kernels: bool = True
    threads: int = 0
    db: Path | None = None
    tune: int = 0
    rpc: str | None = None
    rpc_key: str | None = None
    sparse_weights: bool = True
    memory_planning: bool = True
    train: Path | None = None
    qat: bool = False
    epochs: int | None = None
    config_file: Path | None = None

    def full_pipeline(self) -> str:
        """The pipeline string that runs: import path, ``pipeline``, the pruning sugar, then the
        ``--quantize`` sugar (prune, then quantize).

        ``--prune-channels R`` expands to ``prune-channels{ratio=R}``, ``--prune-nm N:M`` to
        ``prune-nm{n=N,m=M}``, ``--prune S`` to ``prune-magnitude{sparsity=S}`` (in that order).

        ``--quantize S --calibration M --max-accuracy-drop D`` expands to
        ``quantize{scheme=S,calibration=M,budget=D,budget_metric=accuracy}``; ``--quantize
        fp16-compute`` to ``quantize{scheme=fp16,compute=float16}``; ``--quantize S --qat
        --epochs N`` to ``qat{scheme=S,calibration=M,epochs=N}``.
        """
        parts = ["import"] if self.simplify else []
        if self.pipeline:
            parts.append(self.pipeline)
        parts += self._pruning()
        if self.qat:
            parts.append(self._qat_pass())
        elif self.epochs is not None:
            raise EdgecError("--epochs sets how long --qat trains; add --qat (and --train data)")
        elif self.quantize:
            if self.quantize == FP16_COMPUTE:
                options = ["scheme=fp16", "compute=float16"]
            else:
                options = [f"scheme={self.quantize}"]
            if self.calibration:
                options.append(f"calibration={self.calibration}")
            if self.max_accuracy_drop is not None:
                options += [f"budget={self.max_accuracy_drop}", "budget_metric=accuracy"]
            parts.append(f"quantize{{{','.join(options)}}}")
        elif self.calibration:
            raise EdgecError("--calibration chooses how --quantize calibrates; add --quantize int8")
        return ",".join(parts)

    def _pruning(self) -> list[str]:
        steps = []
        if self.prune_channels is not None:
            steps.append(f"prune-channels{{ratio={self.prune_channels}}}")
        if self.prune_nm is not None:
            n, m = self.prune_nm.split(":")
            steps.append(f"prune-nm{{n={n},m={m}}}")
        if self.prune is not None:
            steps.append(f"prune-magnitude{{sparsity={self.prune}}}")
        return steps

    def _qat_pass(self) -> str:
        if not self.quantize:
            raise EdgecError(
                "--qat fine-tunes a quantization scheme: add --quantize int8 (or weight-int4 ...)"
            )
        if not self.train:
            raise EdgecError("--qat trains on data: add --train train.npz")
        if self.max_accuracy_drop is not None:
            raise EdgecError("--max-accuracy-drop searches PTQ mixed precision; it does not apply to --qat")
        options = [f"scheme={self.quantize}"]
        if self.calibration:
            options.append(f"calibration={self.calibration}")
        if self.epochs is not None:
            options.append(f"epochs={self.epochs}")
        return f"qat{{{','.join(options)}}}"

    def merged(self, overrides: dict[str, Any]) -> CompileOptions:
        """A copy with the given non-``None`` values applied (validated like config keys)."""
        values = dataclasses.asdict(self)
        for key, value in _normalise(overrides, "options").items():
            if value is not None:
                values[key] = value
        return CompileOptions(**values)


# The keys a config file may give, by their annotation (strings: ``from __future__ import
# annotations``), so that an option is checked as soon as it is declared.
_TYPES = {f.name: f.type for f in dataclasses.fields(CompileOptions) if f.name != "config_file"}
_FIELDS = set(_TYPES)
_PATH_FIELDS = {name for name, kind in _TYPES.items() if kind == "Path | None"}
_SWITCHES = {name for name, kind in _TYPES.items() if kind == "bool"}
_COUNTS = {name for name, kind in _TYPES.items() if kind in ("int", "int | None")}


def _normalise(raw: dict[str, Any], source: str, base: Path | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            known = ", ".join(sorted(k.replace("_", "-") for k in _FIELDS))
            raise EdgecError(f"{source}: unknown key '{key}'; known keys: {known}")
        if value is None:
            values[name] = None
            continue
        if name == "input_shapes":
            if not isinstance(value, dict):
                raise EdgecError(f"{source}: 'input-shapes' must be a table of NAME = \"1x3x224x224\"")
            value = {k: v if isinstance(v, tuple) else _shape_value(v, source) for k, v in value.items()}
        elif name == "freeze_inputs":
            if not isinstance(value, dict):
                raise EdgecError(f"{source}: 'freeze-inputs' must be a table of NAME = VALUE")
            value = {k: _freeze_value(v, base) for k, v in value.items()}
        elif name in _PATH_FIELDS:
            value = Path(value) if base is None else (base / value)
        elif name == "dump_after":
            value = tuple(value) if isinstance(value, (list, tuple)) else (str(value),)
        elif name in _SWITCHES and not isinstance(value, bool):
            raise EdgecError(f"{source}: '{key}' must be true or false")
        elif name in _COUNTS and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise EdgecError(f"{source}: '{key}' must be a non-negative integer")
        elif name == "max_accuracy_drop" and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1
        ):
            raise EdgecError(f"{source}: '{key}' must be a fraction between 0 and 1 (0.01 = one point)")
        elif name == "name" and (
            not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value)
        ):
            raise EdgecError(f"{source}: name '{value}' must be a C identifier (letters, digits, '_')")
        elif name in ("target", "pipeline", "quantize", "calibration", "rpc", "rpc_key") and not isinstance(
            value, str
        ):
            raise EdgecError(f"{source}: '{key}' must be a string")
        elif name in ("prune", "prune_channels") and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1
        ):
            flag = key.replace("_", "-")
            raise EdgecError(f"{source}: '{flag}' must be a fraction in [0, 1) (0.3 = 30%), not {value!r}")
        elif name == "prune_nm" and not (isinstance(value, str) and re.fullmatch(r"\d+:\d+", value)):
            flag = key.replace("_", "-")
            raise EdgecError(f"{source}: '{flag}' must be N:M such as 2:4 (keep 2 of every 4), not {value!r}")
        elif name == "rounding" and value not in ROUNDINGS:
            raise EdgecError(f"{source}: rounding '{value}' must be one of {', '.join(ROUNDINGS)}")
        values[name] = value
    return values


def _shape_value(value: Any, source: str) -> tuple[int, ...]:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    if isinstance(value, str):
        return parse_shape(value)
    raise EdgecError(f'{source}: bad input shape {value!r}; write "1x3x224x224" or [1, 3, 224, 224]')


def _freeze_value(value: Any, base: Path | None) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if base is not None and text.endswith((".npy", ".npz")):
        return str(base / text)
    return text


def find_config(start: Path) -> Path | None:
    """``edgec.toml`` in ``start``, else ``pyproject.toml`` with a ``[tool.edgec]`` table."""
    candidate = start / "edgec.toml"
    if candidate.is_file():
        return candidate
    pyproject = start / "pyproject.toml"
    if pyproject.is_file() and "edgec" in _read_toml(pyproject).get("tool", {}):
        return pyproject
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise EdgecError(f"config '{path}' is not valid TOML: {exc}") from None
    except OSError as exc:
        raise EdgecError(f"cannot read config '{path}': {exc.strerror}") from None


def load_config(path: Path) -> CompileOptions:
    """Options from a config file; relative paths in it are relative to the file's folder."""
    if not path.is_file():
        raise EdgecError(f"config file '{path}' does not exist")
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("edgec", {})
    return CompileOptions(**_normalise(data, str(path), base=path.parent.resolve()))
