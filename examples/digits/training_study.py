"""The accuracy tables of edgec's training features on the digits CNN, measured end to end.

    python examples/digits/training_study.py [--quick] [--skip-qemu] [--json results.json]

1. Distillation: the same student trained on hard labels and distilled from ``digits_cnn.onnx``
   with the same data, epochs and seeds; test accuracy per seed, mean and spread.
2. Substitution: depthwise-separable and low-rank (energy 0.9) versions of the digits CNN, right
   after the substitution and after recovery (``distill{}`` with the original as the teacher).
3. Quantization-aware training: int8, int4 and binary weights, PTQ against QAT; every QAT model is
   built for cortex-m4 by ``edgec.compile`` (``--qat``) and run under qemu on the validation data,
   next to the accuracy the trainer reported on the same data.

Data: ``digits_train.npz`` split into 1047 training and 300 validation samples (seeded); the
validation samples choose checkpoints, ``digits_test.npz`` (450) is only measured. Every number
is measured by this script (onnxruntime for ONNX models, qemu for the builds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from students import student_cnn  # noqa: E402

from edgec.config import CompileOptions  # noqa: E402
from edgec.data import load_dataset  # noqa: E402
from edgec.ir import EdgeGraph, graph_cost, infer_shapes, load  # noqa: E402
from edgec.pm import PassContext, PassManager  # noqa: E402
from edgec.train.distill import distill, fit  # noqa: E402
from edgec.train.engine import TrainConfig  # noqa: E402
from edgec.train.export import accuracy_of  # noqa: E402

VALIDATION = 300


def split(graph: EdgeGraph) -> tuple[dict, dict, dict]:
    data = load_dataset(HERE / "digits_train.npz", graph, labelled=True).arrays()
    order = np.random.default_rng(1234).permutation(len(data["label"]))
    train = {k: v[order[VALIDATION:]] for k, v in data.items()}
    valid = {k: v[order[:VALIDATION]] for k, v in data.items()}
    test = load_dataset(HERE / "digits_test.npz", graph, labelled=True).arrays()
    return train, valid, test


def test_accuracy(graph: EdgeGraph, test: dict) -> float:
    return accuracy_of(graph, {"input": test["input"]}, test["label"])


def conv_macs(graph: EdgeGraph) -> int:
    return sum(node.macs for node in graph_cost(graph).nodes if node.op == "Conv")


def distillation_table(teacher: EdgeGraph, train, valid, test, seeds, epochs) -> dict:
    rows = []
    for seed in seeds:
        student = EdgeGraph.from_onnx(student_cnn((8, 16), seed=seed))
        infer_shapes(student)
        config = TrainConfig(epochs=epochs, learning_rate=0.01, seed=seed)
        hard = fit(student, train, config, valid)
        soft = distill(student, teacher, train, config, alpha=0.7, temperature=4.0, evaluation=valid)
        rows.append(
            {
                "seed": seed,
                "hard": test_accuracy(hard.graph, test),
                "distilled": test_accuracy(soft.graph, test),
            }
        )
        print(
            f"  seed {seed}: hard labels {rows[-1]['hard']:.4f}, distilled {rows[-1]['distilled']:.4f}",
            flush=True,
        )
    summary = {
        key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))}
        for key in ("hard", "distilled")
    }
    cost = graph_cost(student)
    return {
        "student": f"student_cnn((8, 16)): {cost.params} parameters, {cost.macs} MACs",
        "epochs": epochs,
        "rows": rows,
        "summary": summary,
    }


def substitution_table(teacher: EdgeGraph, train, valid, test, calib, epochs) -> dict:
    baseline = test_accuracy(teacher, test)
    rows = []
    for label, substitution, recovery in (
        (
            "depthwise-separable",
            "substitute-depthwise-separable",
            f"distill{{epochs={epochs[0]},learning_rate=0.003}}",
        ),
        ("low-rank energy 0.9", "factorize-lowrank{energy=0.9}", f"distill{{epochs={epochs[1]}}}"),
    ):
        ctx = PassContext(training=train, evaluation=valid, calibration=calib, reference=teacher)
        graph = teacher.copy()
        substituted = PassManager("import," + substitution, ctx).run(graph).graph
        infer_shapes(substituted)
        before = test_accuracy(substituted, test)
        recovered = PassManager(recovery, ctx).run(substituted.copy()).graph
        after = test_accuracy(recovered, test)
        rows.append(
            {
                "model": label,
                "conv_macs": [conv_macs(teacher), conv_macs(substituted)],
                "macs": [graph_cost(teacher).macs, graph_cost(substituted).macs],
                "params": [graph_cost(teacher).params, graph_cost(substituted).params],
                "accuracy_substituted": before,
                "accuracy_recovered": after,
                "drop_points": 100 * (baseline - after),
            }
        )
        print(f"  {label}: substituted {before:.4f}, recovered {after:.4f} (fp32 {baseline:.4f})", flush=True)
    return {"fp32": baseline, "rows": rows}


def qat_table(model: Path, folder: Path, test, epochs: dict, qemu: bool) -> dict:
    from edgec.compile import compile_model, prepare

    teacher = load(model)
    rows = []
    for scheme, scheme_epochs in epochs.items():
        common = {"calib": HERE / "digits_calib.npz", "eval": folder / "valid.npz", "quantize": scheme}
        ptq = prepare(model, CompileOptions(**common, target="cortex-m4")).graph
        options = CompileOptions(
            **common, target="cortex-m4", qat=True, train=folder / "train.npz", epochs=scheme_epochs
        )
        row = {"scheme": scheme, "fp32": test_accuracy(teacher, test), "ptq": test_accuracy(ptq, test)}
        if qemu:
            build = folder / f"build-{scheme}"
            manifest = compile_model(model, build, options).manifest
            stats = next(r for r in manifest["passes"] if r["name"] == "qat")["stats"]
            qat = load(build / "optimized.onnx")
            row["qemu_validation"] = manifest["error"]["accuracy"]["artifact"]
        else:
            run = prepare(model, options).run
            stats = next(r for r in run.records if r.name == "qat").stats
            qat = run.graph
        row["trainer_validation"] = stats["training"]["accuracy"]
        row["qat"] = test_accuracy(qat, test)
        rows.append(row)
        print(
            f"  {scheme}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)),
            flush=True,
        )
    return {"rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few epochs and one seed (a smoke run)")
    parser.add_argument("--skip-qemu", action="store_true", help="do not build for cortex-m4 / run qemu")
    parser.add_argument("--json", type=Path, help="write the tables as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    teacher = load(HERE / "digits_cnn.onnx")
    infer_shapes(teacher)
    train, valid, test = split(teacher)
    calib = {"input": load_dataset(HERE / "digits_calib.npz", teacher).runs["input"]}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        np.savez(folder / "valid.npz", input=valid["input"][:, 0], label=valid["label"])
        np.savez(folder / "train.npz", input=train["input"][:, 0], label=train["label"])
        quick = args.quick
        print("distillation (test accuracy):", flush=True)
        tables = {
            "distillation": distillation_table(
                teacher, train, valid, test, [0] if quick else [0, 1, 2], 2 if quick else 30
            )
        }
        print("substitution (test accuracy):", flush=True)
        tables["substitution"] = substitution_table(
            teacher, train, valid, test, calib, (1, 1) if quick else (150, 15)
        )
        print(
            "quantization-aware training (test accuracy; validation accuracy by the trainer and under qemu):",
            flush=True,
        )
        epochs = (
            {"int8": 1, "weight-int4": 1, "weight-binary": 1}
            if quick
            else {"int8": 5, "weight-int4": 10, "weight-binary": 40}
        )
        tables["qat"] = qat_table(HERE / "digits_cnn.onnx", folder, test, epochs, not args.skip_qemu)
    tables["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(tables, indent=2) + "\n")
    print(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
