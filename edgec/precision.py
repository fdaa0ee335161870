"""What the passes decided each node computes in, against what the target built.

A quantizing pass records its per-node decisions in the model's metadata (``edgec.precision``,
so the decision survives ``edgec optimize`` and a later ``edgec compile``); the target's lowering
reports per node what it built (``Lowered.nodes``). :func:`mismatches` lists every node where the
two disagree: a build with one fails, because the manifest must say what was built, not what was
planned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from edgec.ir import EdgeGraph

METADATA_KEY = "edgec.precision"
# The vocabulary of what a build reports per node (``BuiltNode.precision`` / ``.weights``).
PRECISIONS = ("int8", "int8-dynamic", "float32", "float16")
WEIGHT_STORAGE = ("int8", "int4", "int2", "binary", "float16", "float32")
# A copy that shares its input's scale: the legalization may remove it (an Identity, an inference
# Dropout), and a removed copy has nothing to build.
SHARED_SCALE = "int8 (shared scale)"

_WEIGHT_ONLY = re.compile(r"^weight-(int8|int4|int2|binary)(/g\d+)?$")


def planned(graph: EdgeGraph) -> dict[str, str]:
    """The per-node decisions recorded in the graph (empty when no pass recorded any)."""
    text = graph.info.metadata.get(METADATA_KEY)
    return dict(json.loads(text)) if text else {}


def record(graph: EdgeGraph, decisions: Mapping[str, str]) -> None:
    """Adds a pass's per-node decisions (``int8``, ``weight-int4``, ``fp16-compute`` ...) to the
    graph's record; a later decision about the same node replaces the earlier one."""
    merged = {**planned(graph), **decisions}
    graph.info.metadata[METADATA_KEY] = json.dumps(dict(sorted(merged.items())), separators=(",", ":"))


def expected(decision: str) -> dict[str, str] | None:
    """What a decision requires of the build: ``{"precision": ...}`` and/or ``{"weights": ...}``;
    ``None`` for decisions that require nothing (``float``, a folded activation)."""
    if decision in ("int8", SHARED_SCALE):
        return {"precision": "int8"}
    if decision == "int8-dynamic":
        return {"precision": "int8-dynamic"}
    if decision.startswith("fp16-compute"):
        return {"precision": "float16"}
    if decision == "fp16-weights":
        return {"weights": "float16"}
    match = _WEIGHT_ONLY.match(decision)
    if match:
        return {"weights": match.group(1)}
    return None


def mismatches(decisions: Mapping[str, str], built: Mapping[str, Any]) -> list[str]:
    """One message per node whose build does not honour the decision taken for it.

    Args:
        decisions: node name → decision, from :func:`planned`.
        built: node name → ``BuiltNode`` (anything with ``precision``, ``weights``, ``reason``).
    """
    problems = []
    for node, decision in sorted(decisions.items()):
        wanted = expected(decision)
        if wanted is None:
            continue
        got = built.get(node)
        if got is None and decision == SHARED_SCALE:
            continue
        if got is None:
            problems.append(f"node '{node}' was quantized ({decision}) but the target built no such node")
            continue
        for field, value in wanted.items():
            actual = getattr(got, field) or "none"
            if actual != value:
                why = f": {got.reason}" if got.reason else ""
                problems.append(
                    f"{got.op} '{node}' was quantized as {decision}, but the target built it with "
                    f"{field} {actual}{why}"
                )
    return problems
