"""``edgec passes`` and ``edgec targets``: what this installation can run and build for (built-in
and plugins)."""

from __future__ import annotations

import click

from edgec.report import echo_json


@click.command()
@click.option("--json", "as_json", is_flag=True)
def passes(as_json: bool) -> None:
    """List the registered passes (built-in and plugins) and named pipelines."""
    import dataclasses

    from edgec.pm import all_passes, all_pipelines, plugin_source

    entries = []
    for name, cls in all_passes().items():
        options = {
            f.name: repr(f.default) if f.default is not dataclasses.MISSING else None
            for f in dataclasses.fields(cls)
        }
        entries.append(
            {
                "name": name,
                "lossless": cls.lossless,
                "summary": cls.summary(),
                "options": options,
                "plugin": plugin_source(name),
            }
        )
    pipelines = [
        {"name": p.name, "pipeline": p.pipeline, "fixed_point": p.fixed_point, "description": p.description}
        for p in all_pipelines().values()
    ]
    if as_json:
        echo_json({"passes": entries, "pipelines": pipelines})
        return
    for entry in entries:
        options = ", ".join(f"{k}={v}" for k, v in entry["options"].items())
        origin = f" [plugin: {entry['plugin']}]" if entry["plugin"] else ""
        kind = "lossless" if entry["lossless"] else "lossy"
        click.echo(f"{entry['name']:<28} {kind:<9} {entry['summary']}{origin}")
        if options:
            click.echo(f"{'':<38} options: {options}")
    click.echo("\nnamed pipelines:")
    for p in pipelines:
        click.echo(f"  {p['name']:<12} {p['pipeline']}{' (to a fixed point)' if p['fixed_point'] else ''}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json: bool) -> None:
    """List the compilation targets."""
    from edgec.targets import all_targets
    from edgec.targets.registry import plugin_source

    entries = [{**t.describe(), "plugin": plugin_source(name)} for name, t in all_targets().items()]
    if as_json:
        echo_json({"targets": entries})
        return
    for entry in entries:
        budgets = ""
        if entry["flash_bytes"]:
            budgets = f" (flash {entry['flash_bytes'] // 1024} KiB, RAM {entry['ram_bytes'] // 1024} KiB)"
        origin = f" [plugin: {entry['plugin']}]" if entry["plugin"] else ""
        click.echo(f"{entry['name']:<14} {entry['description']}{budgets}{origin}")
