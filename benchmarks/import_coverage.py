"""Import coverage: what edgec's import path does to each model, and who can compile it for x86.

For the onnx wheel's light models (seeded random weights) and the models the tests build, prints:
nodes before / after the first ``simplify`` / after the whole ``import`` pipeline, the import time,
then whether ``edgec.compile`` builds it for x86 (max abs error vs onnxruntime, or the first line of
its ``EdgecError``) side by side with TVM's relax ONNX frontend alone (``from_onnx`` +
``tvm.compile`` on the original model with static shapes, no edgec pass).

python benchmarks/import_coverage.py [--models kws gru ...] [--no-light] [--no-tests] [--logits]

The light models keep their final Softmax unless ``--logits``: their error column then compares
probabilities, which are small numbers for most classes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from _common import scratch
from rich.console import Console
from rich.table import Table

from edgec.compile import compile_model, prepare
from edgec.config import CompileOptions
from edgec.errors import EdgecError
from edgec.zoo import light_model, light_model_names

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Entry:
    """A model and how edgec is told to compile it."""

    name: str
    model: onnx.ModelProto
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    freeze_inputs: dict[str, str] = field(default_factory=dict)

    def flags(self) -> str:
        shapes = [f"--input-shape {k}={'x'.join(map(str, v))}" for k, v in self.input_shapes.items()]
        freezes = [f"--freeze-input {k}={v}" for k, v in self.freeze_inputs.items()]
        return " ".join(shapes + freezes)


def test_models() -> list[Entry]:
    """The models that tests/test_streaming.py and tests/test_real_world_models.py compile."""
    # The test modules hold the builders: one definition for the tests, the docs and this table.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.test_real_world_models import cases
    from tests.test_streaming import streaming_model

    entries = [
        Entry("kws (sr=16000)", streaming_model(), freeze_inputs={"sr": "16000"}),
        Entry("kws (sr=8000)", streaming_model(), freeze_inputs={"sr": "8000"}),
        Entry("kws (sr live)", streaming_model()),
        Entry("kws 20-step 8k (sr live)", streaming_model(rate_dependent_steps=True)),
    ]
    entries += [Entry(case.name, case.model, dict(case.input_shapes)) for case in cases()]
    return entries


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def import_path(path: Path, entry: Entry) -> tuple[int, int, int, float, str]:
    """Nodes before, after the first simplify, after the import pipeline; seconds; error or ''."""
    nodes = len(entry.model.graph.node)
    options = CompileOptions(pipeline="", input_shapes=entry.input_shapes, freeze_inputs=entry.freeze_inputs)
    start = time.perf_counter()
    try:
        prepared = prepare(path, options)
    except EdgecError as error:
        return nodes, -1, -1, time.perf_counter() - start, first_line(error)
    seconds = time.perf_counter() - start
    simplified = prepared.run.records[0].nodes_after
    return nodes, simplified, len(prepared.graph.nodes), seconds, ""


def edgec_compile(path: Path, entry: Entry, out_dir: Path) -> tuple[str, float]:
    options = CompileOptions(target="x86", input_shapes=entry.input_shapes, freeze_inputs=entry.freeze_inputs)
    start = time.perf_counter()
    try:
        result = compile_model(path, out_dir, options)
    except EdgecError as error:
        return f"no: {first_line(error)}", time.perf_counter() - start
    seconds = time.perf_counter() - start
    error = result.manifest["error"]["artifact_vs_original"]["max_abs"]
    return f"ok, max abs {error:.1e}", seconds


def tvm_alone(entry: Entry) -> tuple[str, float]:
    """TVM's relax frontend on the original model (static shapes), built for this CPU."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edgec.targets.x86 import host_cpu_name

    initializers = {t.name for t in entry.model.graph.initializer}
    shapes, dtypes = {}, {}
    for value in entry.model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = list(entry.input_shapes.get(value.name, dims))
        dtypes[value.name] = str(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    start = time.perf_counter()
    try:
        # The frontend prints its own "Error converting operator" lines; the table reports them.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = from_onnx(entry.model, shape_dict=shapes, dtype_dict=dtypes)
            tvm.compile(module, target=tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name()}))
    # TVM raises whatever its converters raise (TVMError, ValueError, KeyError, ...): this column
    # reports exactly that, so every exception is caught here on purpose.
    except Exception as error:
        return f"no: {type(error).__name__}: {first_line(error)}"[:120], time.perf_counter() - start
    return "ok", time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="only these (names as in the table)")
    parser.add_argument("--no-light", action="store_true", help="skip the onnx wheel's light models")
    parser.add_argument("--no-tests", action="store_true", help="skip the models the tests build")
    parser.add_argument(
        "--logits",
        action="store_true",
        help="drop the light models' final Softmax, so the error column compares logits",
    )
    args = parser.parse_args()

    entries: list[Entry] = []
    if not args.no_light:
        entries += [Entry(name, light_model(name, logits=args.logits)) for name in light_model_names()]
    if not args.no_tests:
        entries += test_models()
    if args.models:
        entries = [e for e in entries if e.name in args.models or e.name.split(" ")[0] in args.models]

    table = Table(
        "model",
        "edgec flags",
        "nodes",
        "after simplify",
        "after import",
        "import s",
        "edgec x86",
        "edgec s",
        "TVM frontend alone",
        "TVM s",
        box=None,
    )
    console = Console(width=220)
    with scratch() as folder:
        folder = Path(folder)
        for index, entry in enumerate(entries):
            path = folder / f"model{index}.onnx"
            onnx.save_model(entry.model, str(path))
            nodes, simplified, imported, import_seconds, import_error = import_path(path, entry)
            edgec_status, edgec_seconds = edgec_compile(path, entry, folder / f"build{index}")
            tvm_status, tvm_seconds = tvm_alone(entry)
            row = [
                entry.name,
                entry.flags() or "-",
                str(nodes),
                str(simplified) if simplified >= 0 else "-",
                str(imported) if imported >= 0 else f"no: {import_error}"[:60],
                f"{import_seconds:.2f}",
                edgec_status[:110],
                f"{edgec_seconds:.1f}",
                tvm_status,
                f"{tvm_seconds:.1f}",
            ]
            table.add_row(*row)
            print(" | ".join(row), file=sys.stderr, flush=True)  # progress, one line per model
    console.print(table)


if __name__ == "__main__":
    main()
