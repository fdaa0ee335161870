"""``edgec check``: can every node be lowered after the import path? Reported without building.

The check runs the ``import`` pipeline (simplify, inline constant ``If``, decompose recurrent
layers, unroll loops) and the target's legalization with refusals collected instead of raised,
then asks the target which nodes it still cannot translate. Every problem names the node, its op
type and the fix: a shape to fix, an input to freeze, or an op edgec lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from edgec.errors import EdgecError, Fix, UnsupportedNodeError
from edgec.ir import EdgeGraph, dependency_fix, format_shape, static_shape

# Ops whose output shape is read from a tensor operand (index): if that operand is still computed
# at run time after the import path, the TVM frontend cannot give the result a static shape.
_SHAPE_OPERANDS = {
    "Reshape": 1,
    "Expand": 1,
    "Tile": 1,
    "ConstantOfShape": 0,
}


@dataclass(frozen=True)
class Problem:
    """One node that cannot be lowered: what it is, why, and what would fix it."""

    node: str
    op: str
    reason: str
    fix: Fix

    def message(self) -> str:
        """The one-line error, ``<Op> '<node>': <reason>; fix: <fix>``."""
        return f"{self.op} '{self.node}': {self.reason}; fix: {self.fix}"


@dataclass
class CheckReport:
    """What ``check_model`` found; ``ok`` when every node can be lowered."""

    target: str | None
    nodes_before: int
    nodes_after: int
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``edgec check --json``."""
        return {
            "ok": self.ok,
            "target": self.target,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "problems": [
                {"node": p.node, "op": p.op, "reason": p.reason, "fix": p.fix.as_dict()}
                for p in self.problems
            ],
            "warnings": list(self.warnings),
        }

    def lines(self) -> list[str]:
        """Human-readable lines for the CLI, one per problem."""
        if self.ok:
            return [f"ok: all {self.nodes_after} nodes can be lowered (after the import path)"]
        return [problem.message() for problem in self.problems]

    def raise_if_unsupported(self) -> None:
        """Raises ``UnsupportedNodeError`` for the first problem (message names node and fix)."""
        if self.problems:
            first = self.problems[0]
            more = len(self.problems) - 1
            suffix = f" ({more} more node{'s' if more > 1 else ''}: run edgec check)" if more else ""
            raise UnsupportedNodeError(first.node, first.op, first.reason + suffix, first.fix)


def check_model(
    graph: EdgeGraph, target_name: str | None = None, pipeline: str = "import", legalize: bool = True
) -> CheckReport:
    """Reports every node that cannot be lowered for the target after the import path.

    The graph is not modified (the pipelines run on a copy). Its inputs should already have their
    shapes fixed (``fix_input_shapes``) and frozen inputs applied (``freeze_inputs``); an input
    that is still symbolic is itself reported, with the ``--input-shape`` fix.

    Args:
        graph: the model as loaded.
        target_name: the compilation target (default: ``x86``).
        pipeline: the import pipeline to apply before checking.
        legalize: also run the target's legalization pipeline, as ``edgec compile`` does.

    Returns:
        A report with one ``Problem`` per node that cannot be lowered.
    """
    from edgec.pm import PassContext, PassManager
    from edgec.targets import get_target

    target = get_target(target_name or "x86")
    capabilities = target.capabilities()
    report = CheckReport(target=target.name, nodes_before=len(graph.nodes), nodes_after=len(graph.nodes))
    symbolic = [tensor for tensor in graph.inputs if static_shape(tensor) is None]
    for tensor in symbolic:
        shown = format_shape(tensor.shape)
        report.problems.append(
            Problem(
                tensor.name,
                "input",
                f"input '{tensor.name}' has a symbolic or unknown shape ({shown})",
                Fix("--input-shape", f"{tensor.name}=1x..."),
            )
        )
    work = graph.copy()
    refusals: list[UnsupportedNodeError] = []
    if not symbolic:
        # Refusals are collected, not raised, so that one run reports every node.
        ctx = PassContext(
            target=target.name, capabilities=capabilities, warn=report.warnings.append, refusals=refusals
        )
        steps = ",".join(p for p in (pipeline, capabilities.legalization if legalize else "") if p)
        try:
            work = PassManager(steps, ctx).run(work).graph
        except EdgecError as exc:
            report.warnings.append(f"the import path failed, checking the model as loaded: {exc}")
            work = graph.copy()
    report.nodes_after = len(work.nodes)
    refused = set()
    for error in refusals:
        refused.add(error.node_name)
        fix = error.fix or Fix(advice=f"edgec cannot lower this {error.op_type}; change the model")
        report.problems.append(Problem(error.node_name, error.op_type, error.reason, fix))
    branches = _enclosing_ifs(work)
    for error in target.unsupported(work):
        if error.node_name not in refused:
            fix = error.fix or _fix_for_branch(branches.get(error.node_name), error.op_type)
            report.problems.append(Problem(error.node_name, error.op_type, error.reason, fix))
    if not symbolic:
        report.problems.extend(_dynamic_shape_problems(work, refused))
    return report


def _enclosing_ifs(graph: EdgeGraph) -> dict[str, gs.Node]:
    """Node name → the main-graph ``If``/``Loop`` whose subgraph (at any depth) holds it."""

    def nested(node: gs.Node) -> list[gs.Node]:
        found = []
        for value in node.attrs.values():
            for sub in value if isinstance(value, list) else [value]:
                if isinstance(sub, gs.Graph):
                    for inner in sub.nodes:
                        found += [inner, *nested(inner)]
        return found

    return {inner.name: node for node in graph.nodes for inner in nested(node)}


def _fix_for_branch(owner: gs.Node | None, op_type: str) -> Fix:
    """A node inside an ``If`` goes away when the ``If`` folds: freeze what its condition reads."""
    if owner is not None and owner.op == "If":
        fix = dependency_fix(owner.inputs[0])
        if fix is not None:
            return Fix(fix.flag, fix.value, f"so that If '{owner.name}' folds away; {fix.advice}")
        return Fix(advice=f"edgec has no lowering for op {op_type} (in a branch of If '{owner.name}')")
    return Fix(advice=f"edgec has no lowering for op {op_type}")


def _dynamic_shape_problems(graph: EdgeGraph, refused: set[str]) -> list[Problem]:
    """Main-graph nodes whose output shape still depends on a value computed at run time."""
    problems = []
    for node in graph.nodes:
        index = _SHAPE_OPERANDS.get(node.op)
        if index is None or node.name in refused or len(node.inputs) <= index:
            continue
        operand = node.inputs[index]
        if not operand.name or isinstance(operand, gs.Constant):
            continue
        fix = dependency_fix(operand) or Fix(advice="its shape is computed at run time from constants")
        problems.append(
            Problem(
                node.name,
                node.op,
                f"its shape operand '{operand.name}' is computed at run time, so its output shape "
                "is not static",
                fix,
            )
        )
    return problems
