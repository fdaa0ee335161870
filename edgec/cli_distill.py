"""``edgec distill``: train a student ONNX model on a teacher's soft labels (the CLI command).

    edgec distill --teacher T.onnx --student S.onnx --data train.npz [--eval eval.npz]
                  [--temperature 4] [--alpha 0.7] [--epochs N] -o out.onnx

The student's trained weights (the best checkpoint on ``--eval``, else the lowest-loss epoch)
are written to ``-o``; the accuracy printed is that file's, measured under onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgec.errors import EdgecError


def _load(path: str, shapes: dict[str, tuple[int, ...]]) -> Any:
    from edgec.ir import EdgeGraph, fix_input_shapes, infer_shapes, read_model

    graph = EdgeGraph.from_onnx(read_model(path))
    fix_input_shapes(graph, shapes)
    infer_shapes(graph)
    return graph


@click.command()
@click.option("--teacher", required=True, type=click.Path(), help="the trained teacher (ONNX)")
@click.option("--student", required=True, type=click.Path(), help="the student to train (ONNX)")
@click.option("--data", required=True, type=click.Path(), help=".npz training data ('label' optional)")
@click.option("--eval", "eval_path", type=click.Path(), help="labelled .npz: best checkpoint, early stop")
@click.option("--output", "-o", required=True, type=click.Path(), help="the trained student (ONNX)")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="softening temperature T")
@click.option("--alpha", type=float, default=0.7, show_default=True, help="weight of the soft term")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True, help="peak AdamW rate")
@click.option("--patience", type=click.IntRange(min=0), default=0, help="early stop after N epochs (0: off)")
@click.option("--feature", multiple=True, metavar="TENSOR", help="also match this tensor (MSE; repeatable)")
@click.option("--input-shape", multiple=True, help="fix an input's shape, e.g. input=1x3x224x224")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the minibatch order")
@click.option("--json", "as_json", is_flag=True, help="print the training record as JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
def distill(**params: Any) -> None:
    """Train STUDENT to imitate TEACHER: alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE."""
    from edgec.data import load_dataset
    from edgec.ir import parse_input_shape, save
    from edgec.progress import Progress
    from edgec.train.distill import distill as run_distill
    from edgec.train.engine import TrainConfig

    output = Path(params["output"])
    sources = {Path(params["teacher"]).resolve(), Path(params["student"]).resolve()}
    if output.resolve() in sources:
        raise EdgecError(f"output '{output}' is an input model; edgec never overwrites its input")
    if output.is_dir():
        raise EdgecError(f"output '{output}' is a directory; give a file name such as student.onnx")
    shapes = dict(map(parse_input_shape, params["input_shape"]))
    teacher = _load(params["teacher"], shapes)
    student = _load(params["student"], shapes)
    data = load_dataset(params["data"], student).arrays()
    evaluation = (
        load_dataset(params["eval_path"], student, labelled=True).arrays() if params["eval_path"] else None
    )
    progress = Progress(quiet=params["quiet"] or params["as_json"])
    config = TrainConfig(
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        patience=params["patience"],
        seed=params["seed"],
    )
    with progress.step(f"distilling {Path(params['teacher']).name} into {Path(params['student']).name}"):
        result = run_distill(
            student,
            teacher,
            data,
            config,
            alpha=params["alpha"],
            temperature=params["temperature"],
            features=tuple(params["feature"]),
            evaluation=evaluation,
            progress=progress.bar,
            warn=progress.warn,
        )
    save(result.graph, output)
    record = {"output": str(output), **result.stats()}
    if params["as_json"]:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    accuracy = "" if result.accuracy is None else f", accuracy {result.accuracy:.4f} on {params['eval_path']}"
    click.echo(
        f"wrote {output}: {len(result.history)} epochs ({result.stopped}), best epoch {result.best_epoch}"
        f"{accuracy}"
    )
