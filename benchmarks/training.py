"""One training step of the digits CNN at batch 32 against onnxruntime's forward pass, in one run.

python benchmarks/training.py [--threads 1] [--repeat 200]

Rows: onnxruntime's forward pass on the batch; edgec's training step (forward, backward and the
AdamW update, from numpy batch to updated weights) compiled with edgec's CPU schedules, and the
same step with TVM's untuned default kernels. Both sides use ``--threads`` threads. Then the
step's time split (VM calls of the gradient function and the optimizer, the rest in Python) and
the kernels that take the most of it: what stands between the step and the 5x goal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict


def _median_seconds(run, repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _kernel_times(step, inputs, targets, repeat: int) -> dict[str, float]:
    """Seconds per step in each VM call (kernels and builtins), by the VM's instrument hook."""
    import tvm

    totals: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}

    def instrument(func, name, before, ret, *args):
        if before:
            started[name] = time.perf_counter()
        else:
            totals[name] += time.perf_counter() - started[name]
        return 0

    args = [tvm.runtime.tensor(a) for a in inputs] + step.params + [tvm.runtime.tensor(t) for t in targets]
    step.vm.set_instrument(instrument)
    for _ in range(repeat):
        step.vm["backbone_loss_adjoint"](*args)
    step.vm.set_instrument(None)
    return {name: seconds / repeat for name, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads of TVM and onnxruntime")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    # TVM reads its thread count when its runtime starts: before the first import.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import numpy as np
    from _common import onnxruntime_latency
    from rich.console import Console
    from rich.table import Table

    from edgec.data import load_dataset
    from edgec.ir import load
    from edgec.train.compiler import compile_step
    from edgec.train.export import batched_model
    from edgec.train.graph import training_graph
    from edgec.train.losses import LossSpec

    digits = os.path.join(os.path.dirname(__file__), "..", "examples", "digits")
    graph = load(os.path.join(digits, "digits_cnn.onnx"))
    data = load_dataset(os.path.join(digits, "digits_train.npz"), graph, labelled=True).arrays()
    inputs = [np.ascontiguousarray(data["input"][: args.batch, 0])]
    targets = [data["label"][: args.batch]]
    training = training_graph(graph, args.batch)
    model = batched_model(graph, args.batch)
    forward = onnxruntime_latency(model, {"input": inputs[0]}, args.repeat, args.threads)
    console = Console(highlight=False, width=120)
    table = Table("what", "ms", "x onnxruntime forward", "kernels (scheduled)", "compile s", box=None)
    table.add_row(f"onnxruntime forward, batch {args.batch}", f"{forward * 1e3:.3f}", "1.0", "", "")
    steps = {}
    for label, schedules in (
        ("edgec training step, edgec schedules", True),
        ("edgec training step, TVM defaults", False),
    ):
        start = time.perf_counter()
        step = compile_step(training, LossSpec(), {}, {}, {}, schedules=schedules)
        compile_seconds = time.perf_counter() - start
        seconds = _median_seconds(lambda step=step: step.step(inputs, targets, 1e-4), args.repeat)
        steps[schedules] = step
        table.add_row(
            label,
            f"{seconds * 1e3:.3f}",
            f"{seconds / forward:.1f}",
            f"{step.kernels} ({step.scheduled})",
            f"{compile_seconds:.1f}",
        )
    console.print(f"digits CNN, batch {args.batch}; threads: TVM {args.threads}, onnxruntime {args.threads}")
    console.print(table)
    step = steps[True]
    kernels = _kernel_times(step, inputs, targets, args.repeat)
    total = sum(kernels.values())
    gradient = _median_seconds(lambda: _call_adjoint(step, inputs, targets), args.repeat)
    table = Table("where the scheduled step goes", "ms per step", box=None)
    table.add_row("gradient function (VM), all calls", f"{gradient * 1e3:.3f}")
    table.add_row("  of which kernels and builtins (instrumented)", f"{total * 1e3:.3f}")
    for name, seconds in sorted(kernels.items(), key=lambda kv: -kv[1])[:8]:
        table.add_row(f"    {name[:70]}", f"{seconds * 1e3:.3f}")
    console.print(table)


def _call_adjoint(step, inputs, targets) -> None:
    import tvm

    args = [tvm.runtime.tensor(a) for a in inputs] + step.params + [tvm.runtime.tensor(t) for t in targets]
    step.vm["backbone_loss_adjoint"](*args)


if __name__ == "__main__":
    main()
