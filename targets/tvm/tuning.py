"""MetaSchedule tuning of a lowered model, starting from edgec's default schedules.

:func:`tune_module` extracts the float kernels of a lowered Relax module (the int8 micro-kernel
ones keep their hand-written schedules), measures edgec's default schedule of each one and
commits it to the database as the first record, then runs MetaSchedule's evolutionary search
(population sized for a small machine, batches of a few candidates) for the trials that remain.
The database's best record wins at compile time (:func:`.build.schedule_for_cpu`), and the
default is one of the records: tuning never ends slower than the default, as measured.

``trials`` counts the search's candidates (the defaults are measured besides). Resumable: search
trials already in the database for this model's kernels count against ``trials``, so a killed run
started again runs only what is left. Builder and runner workers register only the
target's tensor intrinsics (:func:`limit_tensor_intrinsics`: 0.3 s instead of ~24 s per process).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .tuning_database import TuningDatabase

__all__ = ["TaskResult", "TuneReport", "limit_tensor_intrinsics", "tune_module", "worker_initializer"]

# A candidate's latency counts as failed above this (MetaSchedule records failures as 1e10 s).
_FAILED_SECONDS = 1e9


def limit_tensor_intrinsics() -> None:
    """Registers only the CPU tensor intrinsics (x86, Arm) instead of every vendor's.

    ``import tvm.s_tir.tensor_intrin`` registers CUDA, ROCm, Hexagon, RISC-V ... intrinsics
    (~24 s per process); MetaSchedule imports it in every builder worker. A package object that
    only loads the CPU modules is put in its place first. Picklable: worker initializer.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules[name] = package
    importlib.import_module(f"{name}.x86")
    importlib.import_module(f"{name}.arm_cpu")


def worker_initializer(threads: int) -> None:
    """A builder/runner worker's start: CPU intrinsics only, and the artifact's thread count
    (TVM's default pool in a worker would be half the hardware threads)."""
    from .threads import configure_thread_pool

    limit_tensor_intrinsics()
    configure_thread_pool(threads)


@dataclass
class TaskResult:
    """One kernel: its default schedule's and its best latency (microseconds), trials in the DB."""

    name: str
    default_us: float | None
    best_us: float | None
    trials: int


@dataclass
class TuneReport:
    """What a tuning run did."""

    database: str
    trials_requested: int
    trials_run: int
    seconds: float
    tasks: list[TaskResult] = field(default_factory=list)
    measured_on: str = "this machine"

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "trials_requested": self.trials_requested,
            "trials_run": self.trials_run,
            "minutes": round(self.seconds / 60, 2),
            "kernels": len(self.tasks),
            "measured_on": self.measured_on,
        }


def _mean_seconds(record: Any) -> float | None:
    secs = [float(s) for s in (record.run_secs or [])]
    return statistics.mean(secs) if secs and max(secs) < _FAILED_SECONDS else None


def _default_schedule(func: Any, target: Any) -> Any:
    """edgec's default schedule of one kernel (the first float rule that takes it), or ``None``."""
    from .schedules import float_rules

    for rule in float_rules(target):
        result = rule.apply(func, target, False)
        if isinstance(result, list):
            result = result[0] if result else None
        if result is not None:
            return result
    return None


def _measure(schedules: list[Any], target: Any, builder: Any, runner: Any) -> list[float | None]:
    """Seconds per run of each schedule, with MetaSchedule's builder and runner."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(s.mod, target) for s in schedules])
    inputs, where = [], []
    for index, (sch, result) in enumerate(zip(schedules, built, strict=True)):
        if result.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args))
            where.append(index)
    seconds: list[float | None] = [None] * len(schedules)
    for index, future in zip(where, runner.run(inputs), strict=True):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            seconds[index] = statistics.mean(float(s) for s in result.run_secs)
    return seconds


def _progress_callback(on_batch: Callable[[int, int, float | None], None]) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            secs = [
                statistics.mean(float(s) for s in r.run_secs)
                for r in runner_results
                if r.error_msg is None and r.run_secs
            ]
            on_batch(task_id, len(runner_results), min(secs) if secs else None)

    return Progress()


def tune_module(
    mod: Any,
    tvm_target: dict,
    database: TuningDatabase,
    trials: int,
    *,
    threads: int,
    seed: int = 0,
    progress: Callable[[str, int], Callable[[int, str], None]] | None = None,
    waiting: Callable[[str], None] | None = None,
    builder: Any = None,
    runner: Any = None,
) -> TuneReport:
    """Tunes the unscheduled kernels of ``mod`` (:func:`.build.tuning_module`) into ``database``.

    Args:
        mod: The lowered Relax module whose float kernels are not scheduled yet.
        tvm_target: The TVM target dict.
        database: Where records go (the folder of this target, CPU and thread count).
        trials: Total trials for the model's kernels, those already in the database included.
        threads: Threads the kernels are measured with (the artifact's).
        seed: Seed of the search.
        progress: ``(description, total) -> advance(done, status)``, e.g. ``Progress.bar``.
        waiting: Told when another run holds the database.
        builder, runner: MetaSchedule's (default: local, one worker each).
    """
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    limit_tensor_intrinsics()
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    target = tvm.target.Target({**tvm_target, "num-cores": threads})
    start = time.perf_counter()
    extracted = [
        t
        for t in ms.relax_integration.extract_tasks(mod, target)
        if not t.dispatched[0]["main"].attrs.get("tirx.is_scheduled", False)
    ]
    initializer = functools.partial(worker_initializer, threads)
    builder = builder or ms.builder.LocalBuilder(max_workers=1, initializer=initializer)
    runner = runner or ms.runner.LocalRunner(initializer=initializer)
    report = TuneReport(str(database.path), trials, 0, 0.0)
    with database.writing(waiting) as db, tempfile.TemporaryDirectory(prefix="edgec-tune-") as work:
        workloads = [db.commit_workload(t.dispatched[0]) for t in extracted]
        counts = {}
        for record in db.get_all_tuning_records():
            key = tvm_ffi.structural_hash(record.workload.mod)
            counts[key] = counts.get(key, 0) + 1
        existing = [counts.get(tvm_ffi.structural_hash(w.mod), 0) for w in workloads]
        defaults = [_default_schedule(t.dispatched[0]["main"], target) for t in extracted]
        # The measured latency of each kernel's default schedule, from its record.
        default_secs = [
            None if record is None else _mean_seconds(record)
            for record in (
                _recorded(db.get_top_k(w, 10_000), d) for w, d in zip(workloads, defaults, strict=True)
            )
        ]
        recorded = sum(secs is not None for secs in default_secs)
        # edgec's defaults, measured, are records: on the first run, and again when this edgec's
        # default for a kernel is not the one in the database (a newer rule), so the database
        # never holds only schedules slower than the default.
        seeded = [i for i, d in enumerate(defaults) if d is not None and default_secs[i] is None]
        seconds = _measure([defaults[i] for i in seeded], target, builder, runner) if seeded else []
        for i, secs in zip(seeded, seconds, strict=True):
            if secs is not None:
                args = ms.arg_info.ArgInfo.from_prim_func(extracted[i].dispatched[0]["main"])
                db.commit_tuning_record(
                    ms.database.TuningRecord(defaults[i].trace, workloads[i], [secs], target, args)
                )
                default_secs[i] = secs
        # ``trials`` counts the search: the defaults' records are not trials (a 40-kernel model
        # asked for 64 trials would otherwise search 24).
        remaining = trials - (sum(existing) - recorded)
        if remaining > 0 and extracted:
            report.trials_run = _search(
                extracted, db, target, work, remaining, seed, threads, builder, runner, progress
            )
        for task, workload, default in zip(extracted, workloads, default_secs, strict=True):
            records = db.get_top_k(workload, 10_000)
            best = [s for s in map(_mean_seconds, records) if s is not None]
            report.tasks.append(
                TaskResult(
                    task.task_name,
                    None if default is None else default * 1e6,
                    min(best) * 1e6 if best else None,
                    len(records),
                )
            )
    report.seconds = time.perf_counter() - start
    return report


def _recorded(records: list[Any], schedule: Any) -> Any:
    """The record among ``records`` whose schedule is ``schedule`` (edgec's default), or ``None``."""
    import tvm_ffi

    if schedule is None:
        return None
    for record in records:
        if tvm_ffi.structural_equal(record.as_measure_candidate().sch.mod, schedule.mod):
            return record
    return None


def _search(extracted, db, target, work, trials, seed, threads, builder, runner, progress) -> int:
    """MetaSchedule's evolutionary search over ``extracted`` for ``trials`` more trials."""
    from tvm.s_tir import meta_schedule as ms

    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted,
        work,
        # Sized for a 2-core machine: a small population, few generations, batches of 8.
        strategy=ms.search_strategy.EvolutionarySearch(
            population_size=128, init_min_unmeasured=32, genetic_num_iters=2
        ),
        num_threads=threads,
        seed=seed,
    )
    names = [t.task_name for t in extracted]
    best: dict[int, float] = {}
    done = [0]
    advance = progress(f"tuning {len(names)} kernels", trials) if progress else None

    def on_batch(task_id: int, count: int, seconds: float | None) -> None:
        done[0] += count
        if seconds is not None:
            best[task_id] = min(seconds, best.get(task_id, seconds))
        if advance is not None:
            latest = f"{names[task_id]} best {best[task_id] * 1e6:.1f} us" if task_id in best else ""
            advance(count, latest)

    ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=work,
        max_trials_global=trials,
        num_trials_per_iter=min(8, trials),
        builder=builder,
        runner=runner,
        database=db,
        cost_model=ms.cost_model.XGBModel(num_tuning_cores=threads),
        measure_callbacks=[
            *ms.measure_callback.MeasureCallback.create("default"),
            _progress_callback(on_batch),
        ],
    )
    return done[0]
