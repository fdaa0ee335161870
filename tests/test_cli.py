"""The command line: happy paths, exit codes and every bad input of the foundation issue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.cli import main
from tests.conftest import conv_bn_relu_model
from tests.helpers import make_model


def invoke(cli, *args: str):
    return cli.invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments: str, code: int = 1) -> None:
    """Exit code, the ``edgec: error:`` prefix, the fragments, and no traceback."""
    assert result.exit_code == code, result.output + result.stderr
    assert result.stderr.splitlines()[-1].startswith("edgec: error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_compile_then_run_matches_onnxruntime(cli, model_path: Path, tmp_path: Path) -> None:
    build = tmp_path / "build"
    result = invoke(cli, "compile", model_path, "-o", build, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.output)
    assert manifest == json.loads((build / "manifest.json").read_text())
    assert manifest["status"]["ok"]
    assert manifest["error"]["artifact_vs_original"]["max_abs"] < 1e-4
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(build / "optimized.onnx").graph.node}

    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = invoke(cli, "run", build, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.stderr
    from edgec.verify import run_onnx

    expected = run_onnx(onnx.load(model_path), {"x": x})["y"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], expected, atol=1e-4, rtol=1e-4)

    result = invoke(cli, "run", build, "--inputs", tmp_path / "x.npz", "--repeat", "3", "--json")
    report = json.loads(result.output)
    assert report["outputs"] == {"y": [1, 4]}
    assert 0 < report["latency_ms"]["min"] <= report["latency_ms"]["median"]


def test_compile_is_deterministic(cli, model_path: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert invoke(cli, "compile", model_path, "-o", tmp_path / name, "-q").exit_code == 0
    first = (tmp_path / "a" / "manifest.json").read_bytes()
    assert first == (tmp_path / "b" / "manifest.json").read_bytes()
    files = json.loads(first)["files"]
    assert {"model.so", "optimized.onnx"} <= set(files)


def test_compile_rebuilds_over_a_previous_build(cli, model_path: Path, tmp_path: Path) -> None:
    build = tmp_path / "build"
    assert invoke(cli, "compile", model_path, "-o", build, "-q").exit_code == 0
    assert invoke(cli, "compile", model_path, "-o", build, "-q", "--pipeline", "fuse-conv-bn").exit_code == 0
    assert json.loads((build / "manifest.json").read_text())["pipeline"].endswith("fuse-conv-bn")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".build")] == []


def test_optimize_removes_batchnorm_and_inspect_sums(cli, model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "opt.onnx"
    result = invoke(cli, "optimize", model_path, "-o", out, "--verify-each")
    assert result.exit_code == 0, result.stderr
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(out).graph.node}
    result = invoke(cli, "inspect", model_path, "--json")
    report = json.loads(result.output)
    totals = report["totals"]
    assert totals["macs"] == sum(n["macs"] for n in report["nodes"])
    # conv: 8*8*8 outputs x 27 MACs; fc: 4 x 8
    assert totals["macs"] == 8 * 8 * 8 * 27 + 4 * 8
    assert totals["params"] == 8 * 27 + 8 + 4 * 8 + 32 + 4


def test_passes_and_targets_list(cli) -> None:
    passes = json.loads(invoke(cli, "passes", "--json").output)
    assert "fuse-conv-bn" in {p["name"] for p in passes["passes"]}
    assert "default" in {p["name"] for p in passes["pipelines"]}
    targets = json.loads(invoke(cli, "targets", "--json").output)
    assert {"x86", "x86-64-v3"} <= {t["name"] for t in targets["targets"]}


def test_config_file_sets_options_and_flags_override(
    cli, model_path: Path, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "edgec.toml").write_text('pipeline = "fuse-conv-bn"\nseed = 3\n')
    monkeypatch.chdir(tmp_path)
    result = invoke(cli, "compile", model_path, "-o", tmp_path / "b1", "--json")
    manifest = json.loads(result.output)
    assert manifest["pipeline"].endswith("fuse-conv-bn") and "seed 3" in manifest["error"]["inputs"]
    result = invoke(cli, "compile", model_path, "-o", tmp_path / "b2", "--json", "--seed", "5")
    assert "seed 5" in json.loads(result.output)["error"]["inputs"]


# ----- bad input: each a clear error, exit 1, input untouched, nothing written -----------------


def _unchanged(path: Path, before: bytes) -> None:
    assert path.read_bytes() == before


def test_missing_model(cli, tmp_path: Path) -> None:
    assert_user_error(invoke(cli, "compile", tmp_path / "nope.onnx", "-o", tmp_path / "b"), "does not exist")
    assert not (tmp_path / "b").exists()


def test_not_onnx_and_truncated(cli, model_path: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    assert_user_error(invoke(cli, "compile", text, "-o", tmp_path / "b"), "not")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(model_path.read_bytes()[:200])
    assert_user_error(invoke(cli, "compile", truncated, "-o", tmp_path / "b"), "cut.onnx")
    assert_user_error(invoke(cli, "compile", tmp_path, "-o", tmp_path / "b"), "not a file")
    assert not (tmp_path / "b").exists()


def test_model_failing_the_checker(cli, tmp_path: Path) -> None:
    model = conv_bn_relu_model()
    model.graph.node[0].input[1] = "no_such_weight"
    path = tmp_path / "bad.onnx"
    onnx.save_model(model, str(path))
    assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / "b"), "ONNX checker")


def test_unsupported_op_names_the_node(cli, tmp_path: Path) -> None:
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], name="fold_patches")
    model = make_model(
        [node],
        {"x": (TensorProto.FLOAT, [1, 4, 9])},
        {"y": (TensorProto.FLOAT, [1, 1, 4, 4])},
        {"image": np.array([4, 4], np.int64), "block": np.array([2, 2], np.int64)},
        opset=18,
    )
    path = tmp_path / "col2im.onnx"
    onnx.save_model(model, str(path))
    before = path.read_bytes()
    assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / "b", "-q"), "Col2Im", "fold_patches")
    _unchanged(path, before)
    assert not (tmp_path / "b").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".b")] == []


def test_symbolic_input_shape_needs_fixing(cli, tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    onnx.save_model(conv_bn_relu_model(batch="N"), str(path))
    assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / "b"), "--input-shape x=")
    result = invoke(cli, "compile", path, "-o", tmp_path / "b", "-q", "--input-shape", "x=1x3x8x8")
    assert result.exit_code == 0, result.stderr
    assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / "c", "--input-shape", "x=1x3x8"), "rank")
    assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / "c", "--input-shape", "z=1"), "'z'")


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"wrong": np.zeros((1, 3, 8, 8), np.float32)}, "missing ['x']"),
        ({"x": np.zeros((1, 3, 8, 9), np.float32)}, "shape"),
        ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "dtype"),
    ],
)
def test_bad_inputs_npz(cli, model_path: Path, tmp_path: Path, arrays, fragment: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    result = invoke(cli, "compile", model_path, "-o", tmp_path / "b", "--inputs", tmp_path / "bad.npz", "-q")
    assert_user_error(result, fragment)
    assert not (tmp_path / "b").exists()
    assert invoke(cli, "compile", model_path, "-o", tmp_path / "ok", "-q").exit_code == 0
    assert_user_error(invoke(cli, "run", tmp_path / "ok", "--inputs", tmp_path / "bad.npz"), "input")


def test_unknown_target_pass_and_option(cli, model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert_user_error(
        invoke(cli, "compile", model_path, "-o", out, "-t", "z80"), "unknown target 'z80'", "x86"
    )
    assert_user_error(
        invoke(cli, "compile", model_path, "-o", out, "-p", "fuse-all"), "unknown pass", "fuse-conv-bn"
    )
    assert_user_error(
        invoke(cli, "compile", model_path, "-o", out, "-p", "fold-constants{speed=9}"), "no option 'speed'"
    )
    assert not out.exists()


def test_external_data_outside_the_model_folder(cli, tmp_path: Path) -> None:
    model = conv_bn_relu_model()
    weight = next(i for i in model.graph.initializer if i.name == "w")
    (tmp_path / "secret.bin").write_bytes(numpy_helper.to_array(weight).tobytes())
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(8 * 27 * 4))):
        weight.external_data.add(key=key, value=value)
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "escape.onnx"
    path.write_bytes(model.SerializeToString())
    assert_user_error(invoke(cli, "compile", path, "-o", tmp_path / "b"), "outside the model's folder")
    assert_user_error(invoke(cli, "inspect", path), "outside the model's folder")


def test_external_data_inside_the_folder_loads(cli, tmp_path: Path) -> None:
    model = conv_bn_relu_model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    result = invoke(cli, "inspect", path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.output)["totals"]["params"] > 0


def test_output_directory_must_be_safe(cli, model_path: Path, tmp_path: Path) -> None:
    before = model_path.read_bytes()
    assert_user_error(invoke(cli, "compile", model_path, "-o", model_path.parent), "contains the input model")
    assert_user_error(invoke(cli, "compile", model_path, "-o", tmp_path), "contains the input model")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(invoke(cli, "compile", model_path, "-o", blocker / "sub"), "not a writable folder")
    user_files = tmp_path / "mine"
    user_files.mkdir()
    (user_files / "notes.txt").write_text("keep me")
    assert_user_error(invoke(cli, "compile", model_path, "-o", user_files), "not an edgec build")
    assert (user_files / "notes.txt").read_text() == "keep me"
    _unchanged(model_path, before)
    out = tmp_path / "opt.onnx"
    assert_user_error(invoke(cli, "optimize", model_path, "-o", model_path), "never overwrites")
    assert not out.exists()


def test_bad_config(cli, model_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("targett = 'x86'\n")
    assert_user_error(invoke(cli, "compile", model_path, "-o", tmp_path / "b", "--config", config), "targett")
    config.write_text("target = [\n")
    assert_user_error(invoke(cli, "compile", model_path, "-o", tmp_path / "b", "--config", config), "TOML")


def test_usage_errors_exit_2(cli) -> None:
    assert invoke(cli, "compile").exit_code == 2
    assert invoke(cli, "frobnicate").exit_code == 2


def test_depfile_lists_every_input(cli, model_path: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "edgec.toml").write_text('pipeline = "fuse-conv-bn"\n')
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    monkeypatch.chdir(tmp_path)
    depfile = tmp_path / "deps" / "convnet.d"
    result = invoke(
        cli,
        "compile",
        model_path,
        "-o",
        tmp_path / "b",
        "-q",
        "--depfile",
        depfile,
        "--inputs",
        tmp_path / "x.npz",
    )
    assert result.exit_code == 0, result.stderr
    target, _, deps = depfile.read_text().partition(": ")
    assert target == str((tmp_path / "b" / "manifest.json").resolve())
    listed = [d.strip(" \\\n") for d in deps.split(" \\\n")]
    assert listed == [
        str(model_path.resolve()),
        str((tmp_path / "x.npz").resolve()),
        str((tmp_path / "edgec.toml").resolve()),
    ]


DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"


def test_quantize_sugar_builds_an_int8_artifact(cli, tmp_path: Path) -> None:
    result = invoke(
        cli,
        "compile",
        DIGITS / "digits_cnn.onnx",
        "-o",
        tmp_path / "b",
        "--json",
        "--quantize",
        "int8",
        "--calibration",
        "mse",
        "--calib",
        DIGITS / "digits_calib.npz",
        "--eval",
        DIGITS / "digits_test.npz",
        "--max-accuracy-drop",
        "0.005",
    )
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.output)
    assert manifest["pipeline"].endswith("quantize{calibration=mse,budget=0.005,budget_metric=accuracy}")
    quantize = manifest["passes"][-1]["stats"]
    assert quantize["scheme"] == "int8" and quantize["integer_weights"]["compression"] >= 3.9
    accuracy = manifest["error"]["accuracy"]
    assert accuracy["original"] - accuracy["artifact"] <= 0.005
    assert manifest["error"]["inputs"] == "digits_test.npz (first 8 samples)"


def test_missed_accuracy_budget_exits_3_and_keeps_the_artifact(cli, tmp_path: Path) -> None:
    result = invoke(
        cli,
        "compile",
        DIGITS / "digits_cnn.onnx",
        "-o",
        tmp_path / "b",
        "-q",
        "-p",
        "default,quantize{calibration=percentile,percentile=60}",
        "--calib",
        DIGITS / "digits_calib.npz",
        "--eval",
        DIGITS / "digits_test.npz",
        "--max-accuracy-drop",
        "0.01",
    )
    assert_user_error(result, "accuracy drop", "exceeds --max-accuracy-drop 0.01", code=3)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert not manifest["status"]["ok"] and "accuracy drop" in manifest["status"]["failed_gates"][0]
    assert (tmp_path / "b" / "model.so").is_file()


def test_quantize_option_errors(cli, tmp_path: Path) -> None:
    model = DIGITS / "digits_cnn.onnx"
    assert_user_error(
        invoke(cli, "compile", model, "-o", tmp_path / "b", "--calibration", "mse"), "add --quantize"
    )
    assert_user_error(
        invoke(
            cli,
            "compile",
            model,
            "-o",
            tmp_path / "b",
            "--quantize",
            "int8",
            "--calib",
            DIGITS / "digits_calib.npz",
            "--max-accuracy-drop",
            "0.01",
        ),
        "needs labelled data",
    )
    assert_user_error(invoke(cli, "compile", model, "-o", tmp_path / "b", "--quantize", "int7"), "int7")
    assert not (tmp_path / "b").exists()


def test_name_sets_the_c_prefix(cli, model_path: Path, tmp_path: Path) -> None:
    result = invoke(cli, "compile", model_path, "-o", tmp_path / "b", "-q", "--json", "--name", "kws_v2")
    assert json.loads(result.output)["name"] == "kws_v2"
    assert_user_error(
        invoke(cli, "compile", model_path, "-o", tmp_path / "c", "--name", "2fast"), "C identifier"
    )


@pytest.mark.slow
def test_rounding_selects_the_requantization_of_the_int8_kernels(cli, tmp_path: Path) -> None:
    """``--rounding double`` reaches the integer lowering: each build equals the numpy reference of
    its own rounding bit for bit, and the manifest records it; a bad value is a user error."""
    from edgec.targets.integer.reference import run_reference
    from edgec.targets.x86 import TvmLibraryTarget
    from tests.helpers import legalize

    x = np.load(DIGITS / "digits_test.npz")["input"][:16]
    for rounding in ("single", "double"):
        build = tmp_path / rounding
        args = ["compile", DIGITS / "digits_cnn.onnx", "-o", build, "-q", "--json", "--quantize", "int8"]
        args += ["--calib", DIGITS / "digits_calib.npz", "--rounding", rounding]
        result = invoke(cli, *args)
        assert result.exit_code == 0, result.stderr
        manifest = json.loads(result.output)
        assert manifest["target"]["requantize_rounding"] == rounding
        qdq = onnx.load(build / "optimized.onnx")
        legal = legalize(qdq, rounding=rounding)
        target = TvmLibraryTarget(name="x86", description="", runtime="tvm", runner="host")
        got = target.run(build, manifest, [x[:, None]])[0][0][:, 0]
        want = np.concatenate(
            [run_reference(legal, {"input": x[i : i + 1]})["logits"] for i in range(len(x))]
        )
        np.testing.assert_array_equal(got, want)
    assert_user_error(
        invoke(cli, "compile", DIGITS / "digits_cnn.onnx", "-o", tmp_path / "bad", "--rounding", "up"),
        "rounding 'up' must be one of single, double",
    )
    assert not (tmp_path / "bad").exists()
