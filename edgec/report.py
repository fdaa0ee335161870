"""What ``edgec compile`` prints and writes beside a build: the report of its manifest, its memory
section (``edgec inspect --memory``) and a Make-format dependency file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgec.errors import EdgecError
from edgec.manifest import dumps


def write_depfile(depfile: Path, out_dir: Path, model: Path, options) -> None:
    """A Make-format dependency file: the build's manifest depends on every file that shaped it."""
    from edgec.ir import atomic_path, external_data_files

    inputs = [model.resolve(), *external_data_files(model)]
    data = (options.calib, options.eval, options.inputs, options.config_file, options.train)
    inputs += [p.resolve() for p in data if p]
    inputs += [Path(v).resolve() for v in options.freeze_inputs.values() if v.endswith((".npy", ".npz"))]

    def escape(path: Path) -> str:
        return str(path).replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")

    rule = f"{escape((out_dir / 'manifest.json').resolve())}: " + " \\\n  ".join(escape(p) for p in inputs)
    with atomic_path(depfile) as temporary:
        temporary.write_text(rule + "\n")


def echo_json(data: Any) -> None:
    """Prints ``data`` as the JSON every ``--json`` flag prints (the manifest's encoding)."""
    click.echo(dumps(data), nl=False)


def print_manifest(manifest: dict[str, Any], as_json: bool) -> None:
    """Prints a build's manifest: as JSON, or as the human-readable report of ``edgec compile``."""
    if as_json:
        echo_json(manifest)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    target = manifest["target"]["name"]
    console.print(f"[bold]{manifest['model']['file']}[/] → {target}  (pipeline: {manifest['pipeline']})")
    table = Table("pass", "nodes", "stats", box=None)
    changed = [record for record in manifest["passes"] if record["changed"]]
    for record in changed:
        stats = json.dumps(record["stats"], separators=(",", ":"))
        table.add_row(
            record["name"],
            f"{record['nodes_before']}→{record['nodes_after']}",
            stats if len(stats) < 90 else stats[:87] + "...",
        )
    console.print(table)
    unchanged = len(manifest["passes"]) - len(changed)
    if unchanged:
        console.print(f"({unchanged} more pass runs changed nothing; the manifest lists all of them)")
    for line in precision_lines(manifest.get("precision") or {}):
        console.print(line)
    for note in manifest.get("pipeline_notes") or []:
        console.print(f"note: {note}")
    sizes = manifest["sizes"]
    console.print("sizes: " + ", ".join(f"{k}={v:,}" for k, v in sizes.items()))
    error = manifest["error"]
    art = error["artifact_vs_original"]
    console.print(
        f"error vs onnxruntime ({error['inputs']}): max abs {art['max_abs']:.3g}, "
        f"mean abs {art['mean_abs']:.3g}, cosine {art['cosine']:.6f}"
    )
    if "accuracy" in error:
        acc = error["accuracy"]
        console.print(
            f"accuracy on {acc['dataset']} ({acc['samples']} samples): original {acc['original']:.4f}, "
            f"artifact {acc['artifact']:.4f}"
        )
    status = manifest["status"]
    console.print("status: ok" if status["ok"] else "status: FAILED — " + "; ".join(status["failed_gates"]))


def precision_lines(precision: dict[str, dict[str, str]], shown: int = 3) -> list[str]:
    """What the target built, in one line (nodes per precision), plus the float nodes whose op has
    an integer kernel, with the reason (the first ``shown`` of them)."""
    if not precision:
        return []
    counts: dict[str, int] = {}
    for built in precision.values():
        counts[built["precision"]] = counts.get(built["precision"], 0) + 1
    lines = ["built: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))]
    kept = [(name, built) for name, built in precision.items() if built.get("reason")]
    for name, built in kept[:shown]:
        lines.append(f"  {built['op']} '{name}' runs in {built['precision']}: {built['reason']}")
    if len(kept) > shown:
        lines.append(f"  ({len(kept) - shown} more in the manifest's 'precision')")
    return lines


def print_tune_report(report: Any, as_json: bool) -> None:
    """A tuning report (``edgec tune``): per kernel its default and best latency, then the run."""
    if as_json:
        echo_json({**report.as_dict(), "tasks": [task.__dict__ for task in report.tasks]})
        return
    click.echo(f"{'kernel':<48} {'default us':>11} {'best us':>11} {'speedup':>8} {'trials':>7}")
    for task in report.tasks:
        default = f"{task.default_us:.1f}" if task.default_us is not None else "-"
        best = f"{task.best_us:.1f}" if task.best_us is not None else "-"
        speedup = f"{task.default_us / task.best_us:.2f}x" if task.default_us and task.best_us else "-"
        click.echo(f"{task.name[:48]:<48} {default:>11} {best:>11} {speedup:>8} {task.trials:>7}")
    click.echo(
        f"{report.trials_run} trials in {report.seconds / 60:.1f} min, measured on {report.measured_on}; "
        f"database {report.database}"
    )


def memory_section(legalization: list[dict[str, Any]], details: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's ``memory``: the conv + pool fusions and the row bands the legalization made
    (with the planner's choice and why), and from the build the fused kernels, the in-place steps,
    the live set at the peak and the timeline; ``None`` for a build without a memory report."""
    build = details.pop("memory", None)
    if build is None:
        return None
    records = {record["name"]: record for record in legalization}
    plan = records.get("plan-memory", {}).get("stats", {})
    bands = records.get("patch-stages", {}).get("stats", {})
    return {
        "fusions": records.get("fuse-conv-pool", {}).get("stats", {}).get("nodes", []),
        "patches": {
            **plan.get("chosen", {}),
            "why": plan.get("why"),
            **{k: bands[k] for k in ("rows", "macs") if k in bands},
        }
        if plan
        else None,
        **build,
    }


def print_memory(manifest: dict[str, Any]) -> None:
    """Prints a build's memory timeline (``edgec inspect --memory``): the arena bytes live at each
    step, the live set at the peak, and the fusions, row bands and in-place steps that made it."""
    from rich.console import Console
    from rich.table import Table

    memory = manifest.get("memory")
    if not memory:
        raise EdgecError(
            "this build has no memory report: only runtime-free targets (Cortex-M/A, c) record one"
        )
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    sizes = manifest["sizes"]
    console.print(
        f"[bold]{manifest['name']}[/] on {manifest['target']['name']}: arena {sizes['arena_bytes']:,} B, "
        f"stack {sizes.get('stack_bytes', 0):,} B"
    )
    peak = memory["peak"]
    scale = max(peak.get("live_bytes", 0), 1)
    in_place = {item["step"]: item["kind"] for item in memory["in_place"]}
    table = Table("step", "kernel", "live B", "", "in place", box=None)
    for step in memory["steps"]:
        bar = "#" * round(30 * step["live_bytes"] / scale)
        kernel = step["kernel"] if len(step["kernel"]) <= 48 else step["kernel"][:45] + "..."
        style = "bold" if step["step"] == peak["step"] else None
        table.add_row(
            str(step["step"]),
            kernel,
            f"{step['live_bytes']:,}",
            bar,
            in_place.get(step["step"], ""),
            style=style,
        )
    console.print(table)
    console.print(f"peak at step {peak['step']} ({peak['kernel']}): {peak['live_bytes']:,} B live")
    for buffer in peak["live"]:
        console.print(f"  {buffer['bytes']:>9,} B at {buffer['offset']:>7,}  {', '.join(buffer['tensors'])}")
    for fusion in memory["fusions"]:
        console.print(f"fused: {fusion['conv']} + {fusion['pool']}")
    patches = memory.get("patches") or {}
    if patches.get("until"):
        console.print(
            f"row bands: {patches['bands']} bands up to '{patches['until']}', "
            f"{patches['extra_macs']:,} extra MACs ({patches['extra_macs_share']:.1%}); {patches['why']}"
        )
    elif patches:
        console.print(f"row bands: none; {patches['why']}")
