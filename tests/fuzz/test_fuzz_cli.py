"""The fuzzing campaign: hundreds of generated broken inputs through every command.

Each case must exit 0, 1, 2 or 3, print no traceback, finish within its time limit, and leave
nothing partial behind (see tests/fuzz/harness.py). Generation is seeded (EDGEC_FUZZ_SEED): a
failure prints the seed, the case's description and the command line, and hypothesis prints the
drawn example, so the same case comes back on the next run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import conv_bn_relu_model
from tests.fuzz import mutations
from tests.fuzz.harness import SEED, Referee

pytestmark = pytest.mark.slow

# Cases per test (commands per example multiply them); the sum is the campaign's size.
EXAMPLES = {
    "models": 400,
    "compile": 150,
    "compile-flags": 40,
    "run": 120,
    "config": 120,
    "pipeline": 150,
    "flags": 150,
}


def _settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture
def referee(record_property):
    ref = Referee()
    yield ref
    record_property("fuzz_counts", json.dumps([[c, k, n] for (c, k), n in ref.counts.items()]))


def _write_model(folder: Path, data: bytes) -> Path:
    """The model file, and beside it what external-data mutations point at."""
    (folder / "sub").mkdir()
    (folder / "weights.bin").write_bytes(np.arange(2048, dtype=np.float32).tobytes())
    (folder.parent / "secret.bin").write_bytes(b"\x00" * 4096)
    link = folder / "link.bin"
    if not link.exists():
        link.symlink_to(folder.parent / "secret.bin")
    path = folder / "model.onnx"
    path.write_bytes(data)
    return path


@seed(SEED)
@_settings(EXAMPLES["models"])
@given(
    case=st.one_of(
        mutations.broken_models(),
        mutations.broken_models(mutations.SEMANTIC_MUTATIONS, raw_bytes=False),
    )
)
def test_broken_models_inspect_check_optimize(referee: Referee, case) -> None:
    description, data = case
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as scratch:
        folder = Path(scratch) / "m"
        folder.mkdir()
        path = _write_model(folder, data)
        referee.run(["inspect", path], case=description)
        referee.run(
            ["check", path, "--input-shape", "x=1x16"] if "mlp" in description else ["check", path],
            case=description,
        )
        out = Path(scratch) / "out.onnx"
        referee.run(["optimize", path, "-o", out, "-q"], writes=[out], case=description)


@seed(SEED)
@_settings(EXAMPLES["compile"])
@given(
    case=st.one_of(
        mutations.broken_models(),
        mutations.broken_models(mutations.SEMANTIC_MUTATIONS, raw_bytes=False),
    ),
    target=st.sampled_from(["x86", "cortex-m4"]),
)
def test_broken_models_compile(referee: Referee, case, target: str) -> None:
    description, data = case
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as scratch:
        folder = Path(scratch) / "m"
        folder.mkdir()
        path = _write_model(folder, data)
        out = Path(scratch) / "build"
        args = ["compile", path, "-o", out, "-t", target, "-q"]
        if description.startswith("mlp"):
            args += ["--input-shape", "x=2x16"]
        referee.run(args, writes=[out], case=description)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The convnet and its builds for x86 (``build``) and cortex-m4 (``build-cortex-m4``, run under
    qemu) that the dataset cases run."""
    folder = tmp_path_factory.mktemp("fuzz-build")
    model = folder / "convnet.onnx"
    onnx.save_model(conv_bn_relu_model(), str(model))
    Referee().run(["compile", model, "-o", folder / "build", "-q"], case="setup")
    Referee().run(["compile", model, "-o", folder / "build-cortex-m4", "-t", "cortex-m4", "-q"], case="setup")
    return folder


@seed(SEED)
@_settings(EXAMPLES["run"])
@given(
    case=mutations.broken_npz(),
    command=st.sampled_from(["run", "run", "run-cortex-m4", "compile-inputs"]),
)
def test_broken_datasets(referee: Referee, built: Path, case, command: str) -> None:
    description, data = case
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as scratch:
        npz = Path(scratch) / "data.npz"
        npz.write_bytes(data)
        out = Path(scratch) / "out"
        if command.startswith("run"):
            build = built / ("build-cortex-m4" if command.endswith("m4") else "build")
            referee.run(
                ["run", build, "--inputs", npz, "-o", f"{out}.npz"],
                writes=[Path(f"{out}.npz")],
                case=description,
            )
        else:
            referee.run(
                ["compile", built / "convnet.onnx", "-o", out, "--inputs", npz, "-q"],
                writes=[out],
                case=description,
            )


@seed(SEED)
@_settings(EXAMPLES["config"])
@given(case=mutations.broken_configs(), command=st.sampled_from(["check", "optimize"]))
def test_broken_config_files(referee: Referee, built: Path, case, command: str) -> None:
    description, text = case
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as scratch:
        config = Path(scratch) / "edgec.toml"
        config.write_text(text, errors="surrogatepass")
        model = built / "convnet.onnx"
        if command == "check":
            referee.run(["check", model, "--config", config], case=description)
        else:
            out = Path(scratch) / "out.onnx"
            referee.run(
                ["optimize", model, "-o", out, "-q", "--config", config], writes=[out], case=description
            )


@seed(SEED)
@_settings(EXAMPLES["pipeline"])
@given(pipeline=mutations.pipelines)
def test_pipeline_strings(referee: Referee, built: Path, pipeline: str) -> None:
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as scratch:
        out = Path(scratch) / "out.onnx"
        referee.run(
            ["optimize", built / "convnet.onnx", "-o", out, "-q", "-p", pipeline],
            writes=[out],
            case=f"pipeline {pipeline!r}",
        )


def _flag_lists(values: dict) -> st.SearchStrategy:
    """One to three ``(flag, value)`` pairs, each value drawn from its flag's strategy."""
    pairs = st.sampled_from(sorted(values)).flatmap(lambda flag: st.tuples(st.just(flag), values[flag]))
    return st.lists(pairs, min_size=1, max_size=3)


@seed(SEED)
@_settings(EXAMPLES["flags"])
@given(
    flags=_flag_lists(mutations.FLAG_VALUES),
    command=st.sampled_from(["check", "optimize"]),
)
def test_flag_values(referee: Referee, built: Path, flags, command: str) -> None:
    accepted = {"check": {"--input-shape", "--freeze-input", "--target"}}.get(command)
    args = [a for flag, value in flags if accepted is None or flag in accepted for a in (flag, value)]
    if command == "optimize":
        args = [a for a in args if a != "--target"] if "--target" not in args else args
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as scratch:
        out = Path(scratch) / "out.onnx"
        base = (
            ["check", built / "convnet.onnx"]
            if command == "check"
            else ["optimize", built / "convnet.onnx", "-o", out, "-q"]
        )
        writes = [out] if command == "optimize" else []
        referee.run([*base, *args], writes=writes, case=f"flags {flags}")


@seed(SEED)
@_settings(EXAMPLES["compile-flags"])
@given(
    flags=_flag_lists(mutations.COMPILE_FLAG_VALUES),
    target=st.sampled_from(["x86", "cortex-m4"]),
)
def test_compile_flag_values(referee: Referee, built: Path, flags, target: str) -> None:
    with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as scratch:
        out = Path(scratch) / "build"
        args = ["compile", built / "convnet.onnx", "-o", out, "-q", "-t", target]
        referee.run([*args, *(a for pair in flags for a in pair)], writes=[out], case=f"flags {flags}")
