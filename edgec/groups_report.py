"""``edgec inspect --groups``: the channel dependency groups of a model as text or JSON, from the
``channel-groups`` analysis (registered with the pruning passes, found through the registry)."""

from __future__ import annotations

from typing import Any

from edgec.ir import EdgeGraph


def channel_groups(graph: EdgeGraph) -> dict[str, Any]:
    """The JSON form of the ``channel-groups`` analysis of ``graph`` (shapes inferred)."""
    from edgec.pm import AnalysisManager, all_passes

    all_passes()  # loads the built-in passes, which register their analyses
    return AnalysisManager().get("channel-groups", graph).as_dict()


def format_groups(report: dict[str, Any]) -> str:
    """One paragraph per group: its units and origins, each member with its role, and what must
    stay (with the reason); then the totals."""
    lines = []
    for group in report["groups"]:
        origins = ", ".join(group["origins"]) or "-"
        lines.append(
            f"group {group['group']}: {group['units']} units, {group['prunable']} prunable; origins {origins}"
        )
        for member in group["members"]:
            lines.append(
                f"  {member['role']:<10} {member['op']:<20} {member['node']}"
                f"  ({member['channels']} of {member['tensor']})"
            )
        lines.extend(f"  left alone: {reason}" for reason in group["left_alone"])
    lines.append(
        f"{len(report['groups'])} groups, {report['units']} units, {report['prunable']} prunable "
        "(a unit is a channel, or channels that only go together)"
    )
    return "\n".join(lines) + "\n"
