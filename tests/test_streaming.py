"""A keyword-spotting-style streaming model, end to end: frozen sample rate, nested If, LSTM state.

The model is built like the streaming audio exports found in the wild (voice activity detection,
keyword spotting): one 10 ms frame in, a Conv1d front end, an LSTM whose state is an explicit
input and output (the caller feeds ``state_h_out``/``state_c_out`` back), a sigmoid head, and an
``If`` on a sample-rate input that selects between two front ends, each with a nested ``If`` on
the rank of ``audio``. Freezing ``sr`` folds both levels of ``If``; ``decompose-lstm`` removes the
``LSTM``; the x86 build then matches onnxruntime on the original model step after step.

Numeric bound: fp32, ``atol=1e-5`` on every output of every step (STYLE.md), with each side
feeding back its own state (so any drift would accumulate over the 10 steps).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgec.run import run_build
from edgec.verify import run_onnx
from tests.helpers import make_model
from tests.test_cli import assert_user_error, invoke

F, I64 = TensorProto.FLOAT, TensorProto.INT64
FRAME = 160  # samples per step: 10 ms at 16 kHz
CHANNELS = 8  # Conv1d output channels = LSTM input size
STEPS_PER_FRAME = 10  # LSTM steps per frame (both rates; 20 at 8 kHz with rate_dependent_steps)
HIDDEN = 16
ATOL = 1e-5
STEPS = 10


def _value(name: str, dtype: int, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _rank_if(tag: str) -> list[onnx.NodeProto]:
    """``x3 = audio if rank(audio) == 3 else Reshape(audio, [1, 1, -1])`` (as VAD exports do)."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["audio"], [f"{tag}_as_is"])],
        f"{tag}_rank3",
        [],
        [_value(f"{tag}_as_is", F, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Reshape", ["audio", "to_ncw"], [f"{tag}_reshaped"])],
        f"{tag}_rank_other",
        [],
        [_value(f"{tag}_reshaped", F, None)],
    )
    return [
        helper.make_node("Shape", ["audio"], [f"{tag}_shape"], name=f"{tag}_shape"),
        helper.make_node("Size", [f"{tag}_shape"], [f"{tag}_rank"], name=f"{tag}_size"),
        helper.make_node("Equal", [f"{tag}_rank", "three"], [f"{tag}_is_rank3"], name=f"{tag}_eq"),
        helper.make_node(
            "If",
            [f"{tag}_is_rank3"],
            [f"{tag}_x"],
            name=f"{tag}_rank_if",
            then_branch=then_branch,
            else_branch=else_branch,
        ),
    ]


def _front_end(tag: str, stride: int, kernel: int, pool: int, scale: bool) -> onnx.GraphProto:
    """One sample rate's front end: rank If, (scaling), Conv1d, Relu, MaxPool → [1, C, T]."""
    nodes = _rank_if(tag)
    x = f"{tag}_x"
    if scale:
        nodes.append(helper.make_node("Mul", [x, "gain_8k"], [f"{tag}_scaled"], name=f"{tag}_gain"))
        x = f"{tag}_scaled"
    pad = (kernel - stride) // 2
    nodes += [
        helper.make_node(
            "Conv",
            [x, f"conv_w_{tag}", f"conv_b_{tag}"],
            [f"{tag}_conv"],
            name=f"{tag}_conv",
            kernel_shape=[kernel],
            strides=[stride],
            pads=[pad, pad],
        ),
        helper.make_node("Relu", [f"{tag}_conv"], [f"{tag}_relu"], name=f"{tag}_relu"),
        helper.make_node(
            "MaxPool",
            [f"{tag}_relu"],
            [f"{tag}_feats"],
            name=f"{tag}_pool",
            kernel_shape=[pool],
            strides=[pool],
        ),
    ]
    steps = FRAME // (stride * pool)
    return helper.make_graph(nodes, f"front_end_{tag}", [], [_value(f"{tag}_feats", F, [1, CHANNELS, steps])])


def streaming_model(
    seed: int = 0, sr_shape: list[int] | None = None, rate_dependent_steps: bool = False
) -> onnx.ModelProto:
    """The streaming model with seeded weights.

    Args:
        seed: seed of every weight.
        sr_shape: declared shape of ``sr`` (``[]`` scalar by default, or ``[1]``).
        rate_dependent_steps: the 8 kHz front end yields 20 LSTM steps instead of 10, so the
            LSTM's sequence length is only known once ``sr`` is frozen.
    """
    rng = np.random.default_rng(seed)

    def normal(scale: float, *shape: int) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    # 16 kHz: kernel 8, stride 4 → 40 positions, pool 4 → 10 steps.
    # 8 kHz: gain, kernel 4, stride 2 → 80 positions, pool 8 → 10 steps.
    then_branch = _front_end("sr16k", stride=4, kernel=8, pool=4, scale=False)
    else_branch = _front_end("sr8k", stride=2, kernel=4, pool=4 if rate_dependent_steps else 8, scale=True)
    gates = 4 * HIDDEN
    initializers = {
        "sr_16k": np.array(16000, np.int64),
        "three": np.array(3, np.int64),
        "to_ncw": np.array([1, 1, -1], np.int64),
        "gain_8k": np.array(2.0, np.float32),
        "conv_w_sr16k": normal(0.4, CHANNELS, 1, 8),
        "conv_b_sr16k": normal(0.1, CHANNELS),
        "conv_w_sr8k": normal(0.4, CHANNELS, 1, 4),
        "conv_b_sr8k": normal(0.1, CHANNELS),
        "lstm_w": normal(0.3, 1, gates, CHANNELS),
        "lstm_r": normal(0.3, 1, gates, HIDDEN),
        "lstm_b": normal(0.1, 1, 2 * gates),
        "flat": np.array([1, HIDDEN], np.int64),
        "head_w": normal(0.5, 1, HIDDEN),
        "head_b": normal(0.1, 1),
    }
    nodes = [
        helper.make_node("Equal", ["sr", "sr_16k"], ["is_16k"], name="sr_eq"),
        helper.make_node(
            "If", ["is_16k"], ["feats"], name="sr_if", then_branch=then_branch, else_branch=else_branch
        ),
        helper.make_node("Transpose", ["feats"], ["sequence"], name="to_sequence", perm=[2, 0, 1]),
        helper.make_node(
            "LSTM",
            ["sequence", "lstm_w", "lstm_r", "lstm_b", "", "state_h", "state_c"],
            ["", "state_h_out", "state_c_out"],
            name="lstm",
            hidden_size=HIDDEN,
        ),
        helper.make_node("Reshape", ["state_h_out", "flat"], ["last"], name="flatten"),
        helper.make_node("Gemm", ["last", "head_w", "head_b"], ["logit"], name="head", transB=1),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="prob"),
    ]
    state = [1, 1, HIDDEN]
    return make_model(
        nodes,
        {
            "audio": (F, [1, 1, FRAME]),
            "sr": (I64, [] if sr_shape is None else sr_shape),
            "state_h": (F, state),
            "state_c": (F, state),
        },
        {"prob": (F, [1, 1]), "state_h_out": (F, state), "state_c_out": (F, state)},
        initializers,
        name="kws",
    )


# ----- helpers -----------------------------------------------------------------------------------


def _save(model: onnx.ModelProto, folder: Path, name: str = "kws.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(model, str(path))
    return path


def _all_ops(graph: onnx.GraphProto) -> list[str]:
    """Op types of a graph and of every subgraph in it."""
    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                ops.extend(_all_ops(sub))
    return ops


def _conv_kernels(build: Path) -> list[list[int]]:
    graph = onnx.load(str(build / "optimized.onnx")).graph
    return [
        list(helper.get_attribute_value(a))
        for node in graph.node
        if node.op_type == "Conv"
        for a in node.attribute
        if a.name == "kernel_shape"
    ]


def _frames(seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.5 * rng.standard_normal((1, 1, FRAME))).astype(np.float32) for _ in range(STEPS)]


def _first_feeds() -> dict[str, np.ndarray]:
    zeros = np.zeros((1, 1, HIDDEN), np.float32)
    return {"audio": _frames()[0], "state_h": zeros, "state_c": zeros}


def _stream(model_path: Path, build: Path, sr: np.ndarray, work: Path, feed_sr: bool = False) -> list[dict]:
    """Runs the build and onnxruntime (original model, ``sr`` fed) over ``STEPS`` frames.

    Each side feeds its own ``state_*_out`` back as the next ``state_*``. Returns per step
    ``{"edgec": outputs, "onnxruntime": outputs}``.
    """
    original = onnx.load(str(model_path))
    zeros = np.zeros((1, 1, HIDDEN), np.float32)
    ours = {"state_h_out": zeros, "state_c_out": zeros}
    theirs = dict(ours)
    steps = []
    for index, audio in enumerate(_frames()):
        feeds = {"audio": audio, "state_h": ours["state_h_out"], "state_c": ours["state_c_out"]}
        if feed_sr:
            feeds["sr"] = sr
        step_file = work / f"step{index}.npz"
        np.savez(step_file, **feeds)
        ours, _ = run_build(build, step_file)
        theirs = run_onnx(
            original,
            {"audio": audio, "sr": sr, "state_h": theirs["state_h_out"], "state_c": theirs["state_c_out"]},
        )
        steps.append({"edgec": ours, "onnxruntime": theirs})
    return steps


def _assert_steps_match(steps: list[dict]) -> None:
    assert len(steps) == STEPS
    for index, step in enumerate(steps):
        assert sorted(step["edgec"]) == ["prob", "state_c_out", "state_h_out"]
        for name, expected in step["onnxruntime"].items():
            got = step["edgec"][name]
            assert got.shape == expected.shape and got.dtype == np.float32, name
            np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0, err_msg=f"step {index}: {name}")
    # The state really evolves: the comparison is not between zeros.
    assert np.abs(steps[-1]["onnxruntime"]["state_c_out"]).max() > 0.1
    assert np.ptp([s["onnxruntime"]["prob"].item() for s in steps]) > 1e-3


def _compile(
    folder: Path, model: onnx.ModelProto, *flags: str, target: str = "x86"
) -> tuple[Path, Path, dict]:
    path = _save(model, folder / "models")
    build = folder / "build"
    result = invoke(CliRunner(), "compile", path, "--target", target, *flags, "-o", build, "-q", "--json")
    assert result.exit_code == 0, result.stderr
    return path, build, json.loads(result.output)


@pytest.fixture(scope="module")
def build_16k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The model (``sr`` a scalar) compiled with ``--freeze-input sr=16000``."""
    return _compile(tmp_path_factory.mktemp("kws16k"), streaming_model(), "--freeze-input", "sr=16000")


@pytest.fixture(scope="module")
def build_8k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The model with ``sr`` declared ``[1]``, compiled with ``--freeze-input sr=8000``."""
    model = streaming_model(sr_shape=[1])
    return _compile(tmp_path_factory.mktemp("kws8k"), model, "--freeze-input", "sr=8000")


# ----- (a)-(c) frozen sample rate, 10 steps with the state fed back ---------------------------------


def test_16k_build_matches_onnxruntime_over_ten_steps(build_16k, tmp_path: Path) -> None:
    model_path, build, _ = build_16k
    _assert_steps_match(_stream(model_path, build, np.array(16000, np.int64), tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="needs qemu-system-arm (see .ci/run)")
def test_cortex_m4_firmware_matches_onnxruntime_over_ten_steps(tmp_path: Path) -> None:
    """The same stream on a Cortex-M4 under qemu: runtime-free C, state fed back by the caller."""
    model_path, build, manifest = _compile(
        tmp_path, streaming_model(), "--freeze-input", "sr=16000", target="cortex-m4"
    )
    assert manifest["status"]["ok"] and manifest["sizes"]["arena_bytes"] > 0
    _assert_steps_match(_stream(model_path, build, np.array(16000, np.int64), tmp_path))


def test_manifest_lists_the_frozen_rate_and_no_control_flow_is_left(build_16k) -> None:
    _, build, manifest = build_16k
    assert manifest == json.loads((build / "manifest.json").read_text())
    assert manifest["frozen_inputs"] == {"sr": 16000}
    assert [i["name"] for i in manifest["inputs"]] == ["audio", "state_h", "state_c"]
    assert [o["name"] for o in manifest["outputs"]] == ["prob", "state_h_out", "state_c_out"]
    assert manifest["error"]["artifact_vs_original"]["max_abs"] <= ATOL
    ops = _all_ops(onnx.load(str(build / "optimized.onnx")).graph)
    assert not {"If", "LSTM", "Loop"} & set(ops), sorted(set(ops))
    assert _conv_kernels(build) == [[8]]  # the 16 kHz front end
    decomposed = next(p for p in manifest["passes"] if p["name"] == "decompose-lstm")
    assert decomposed["stats"]["nodes"] == [{"node": "lstm", "steps": STEPS_PER_FRAME, "directions": 1}]


def test_8k_selects_the_other_branch_and_matches(build_8k, build_16k, tmp_path: Path) -> None:
    model_path, build, manifest = build_8k
    assert manifest["frozen_inputs"] == {"sr": [8000]}  # declared [1], recorded as a list
    assert _conv_kernels(build) == [[4]]  # the 8 kHz front end
    steps = _stream(model_path, build, np.array([8000], np.int64), tmp_path)
    _assert_steps_match(steps)
    # The two rates really take different branches: the 16 kHz build disagrees on the same frames.
    np.savez(tmp_path / "first.npz", **_first_feeds())
    other, _ = run_build(build_16k[1], tmp_path / "first.npz")
    assert np.abs(other["prob"] - steps[0]["edgec"]["prob"]).max() > 1e-3


# ----- (d) edgec check without freezing sr --------------------------------------------------------


def test_check_without_freezing_passes_because_tvm_lowers_the_if(tmp_path: Path) -> None:
    """Both front ends give 10 steps, so the LSTM decomposes with ``sr`` live and the one ``If``
    left (the nested rank ``If`` nodes fold: ``audio``'s rank is static) has a Relax lowering."""
    path = _save(streaming_model(), tmp_path)
    result = invoke(CliRunner(), "check", path, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.output)
    assert report["ok"] is True and report["problems"] == []
    assert report["nodes_before"] == 7 and report["nodes_after"] > 100  # LSTM unrolled over 10 steps


def test_check_names_the_lstm_when_the_rate_decides_its_length(tmp_path: Path) -> None:
    """At 8 kHz this variant yields 20 steps: with ``sr`` live the LSTM's length is symbolic."""
    path = _save(streaming_model(rate_dependent_steps=True), tmp_path)
    result = invoke(CliRunner(), "check", path)
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith("LSTM 'lstm': input 'sequence' has a symbolic sequence length"), line
    assert "--freeze-input sr=VALUE" in line and "--input-shape" not in line
    result = invoke(CliRunner(), "check", path, "--freeze-input", "sr=8000")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: all ")


def test_rate_frozen_from_a_npy_file(tmp_path: Path) -> None:
    """``--freeze-input sr=rate.npy`` reads the array (not its text form) and settles the length."""
    path = _save(streaming_model(rate_dependent_steps=True, sr_shape=[1]), tmp_path)
    np.save(tmp_path / "rate.npy", np.array([8000], np.int64))
    result = invoke(CliRunner(), "check", path, "--freeze-input", f"sr={tmp_path / 'rate.npy'}")
    assert result.exit_code == 0, result.output + result.stderr


@pytest.mark.slow
def test_unfrozen_build_selects_the_branch_at_run_time(tmp_path: Path) -> None:
    """What check promised: without freezing, the build keeps one If and takes either branch."""
    model_path, build, manifest = _compile(tmp_path, streaming_model())
    assert manifest["frozen_inputs"] == {}
    assert [i["name"] for i in manifest["inputs"]] == ["audio", "sr", "state_h", "state_c"]
    ops = _all_ops(onnx.load(str(build / "optimized.onnx")).graph)
    assert ops.count("If") == 1 and "LSTM" not in ops
    for rate in (16000, 8000):
        work = tmp_path / str(rate)
        work.mkdir()
        _assert_steps_match(_stream(model_path, build, np.array(rate, np.int64), work, feed_sr=True))


# ----- (e) refusals: each a clear error, exit 1, no traceback, nothing written ---------------------


def _refusal_cases(folder: Path) -> list[tuple[str, onnx.ModelProto, list[str], list[str]]]:
    """(id, model, extra CLI flags, fragments the error must contain)."""
    as_float = folder / "sr_float.npy"
    np.save(as_float, np.array(16000.0))
    two_rates = folder / "sr_two.npy"
    np.save(two_rates, np.array([16000, 8000], np.int64))
    everything = []
    for name, value in (
        ("audio", np.zeros((1, 1, FRAME), np.float32)),
        ("state_h", np.zeros((1, 1, HIDDEN), np.float32)),
        ("state_c", np.zeros((1, 1, HIDDEN), np.float32)),
    ):
        np.save(folder / f"{name}.npy", value)
        everything += ["--freeze-input", f"{name}={folder / f'{name}.npy'}"]
    symbolic_audio = streaming_model()
    symbolic_audio.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "samples"
    model = streaming_model()
    return [
        ("unknown", model, ["--freeze-input", "rate=16000"], ["--freeze-input names 'rate'", "'sr'"]),
        ("float", model, ["--freeze-input", f"sr={as_float}"], ["'sr' is int64", "array is float64"]),
        ("shape", model, ["--freeze-input", f"sr={two_rates}"], ["'sr' has shape []", "shape [2]"]),
        ("fraction", model, ["--freeze-input", "sr=16000.5"], ["'sr' is int64", "not an integer"]),
        ("every", model, ["--freeze-input", "sr=16000", *everything], ["freeze every input"]),
        (
            "lstm-length",
            streaming_model(rate_dependent_steps=True),
            [],
            ["LSTM 'lstm'", "symbolic sequence length", "--freeze-input sr=VALUE"],
        ),
        ("symbolic-audio", symbolic_audio, [], ["input 'audio'", "--input-shape"]),
    ]


CASE_IDS = ["unknown", "float", "shape", "fraction", "every", "lstm-length", "symbolic-audio"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_refusals(case: str, tmp_path: Path) -> None:
    cases = {c[0]: c[1:] for c in _refusal_cases(tmp_path)}
    assert sorted(cases) == sorted(CASE_IDS)
    model, flags, fragments = cases[case]
    path = _save(model, tmp_path / "models")
    before = path.read_bytes()
    build = tmp_path / "out" / "build"
    result = invoke(CliRunner(), "compile", path, "--target", "x86", *flags, "-o", build, "-q")
    assert_user_error(result, *fragments)
    assert path.read_bytes() == before
    assert not build.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
