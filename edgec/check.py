"""``edgec check``: can every node be lowered after the import path? Reported without building.

The check runs the ``import`` pipeline (simplify, inline constant ``If``, decompose recurrent
layers, unroll loops) with refusals collected instead of raised, then asks the TVM lowering which
nodes it still cannot convert. Every problem names the node, its op type and the fix: a shape to
fix, an input to freeze, or an op edgec lacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError, UnsupportedNodeError
from edgec.ir import EdgeGraph, static_shape

# Ops whose output shape is read from a tensor operand (index): if that operand is still computed
# at run time after the import path, the TVM frontend cannot give the result a static shape.
_SHAPE_OPERANDS = {
    "Reshape": 1,
    "Expand": 1,
    "Tile": 1,
    "ConstantOfShape": 0,
}
_RECURRENT = {"LSTM", "GRU", "RNN"}


@dataclass(frozen=True)
class Problem:
    """One node that cannot be lowered: what it is, why, and what would fix it."""

    node: str
    op: str
    reason: str
    fix: str

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
            "problems": [asdict(problem) for problem in self.problems],
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
            raise UnsupportedNodeError(first.node, first.op, f"{first.reason}; fix: {first.fix}{suffix}")


def check_model(graph: EdgeGraph, target_name: str | None = None, pipeline: str = "import") -> CheckReport:
    """Reports every node that cannot be lowered for the target after the import path.

    The graph is not modified (the pipeline runs on a copy). Its inputs should already have their
    shapes fixed (``fix_input_shapes``) and frozen inputs applied (``freeze_inputs``); an input
    that is still symbolic is itself reported, with the ``--input-shape`` fix.

    Args:
        graph: the model as loaded.
        target_name: the compilation target (recorded; every current target lowers through TVM's
            relax ONNX frontend, so the op coverage is the same).
        pipeline: the import pipeline to apply before checking.

    Returns:
        A report with one ``Problem`` per node that cannot be lowered.
    """
    from edgec.pm import PassContext, PassManager

    report = CheckReport(target=target_name, nodes_before=len(graph.nodes), nodes_after=len(graph.nodes))
    symbolic = [tensor for tensor in graph.inputs if static_shape(tensor) is None]
    for tensor in symbolic:
        shown = "?" if tensor.shape is None else "x".join(str(d) for d in tensor.shape)
        report.problems.append(
            Problem(
                tensor.name,
                "input",
                f"input '{tensor.name}' has a symbolic or unknown shape ({shown})",
                f"fix the shape with --input-shape {tensor.name}=1x...",
            )
        )
    work = graph.copy()
    refusals: list[UnsupportedNodeError] = []
    if not symbolic:
        # Refusals are collected, not raised, so that one run reports every node.
        ctx = PassContext(target=target_name, warn=report.warnings.append, refusals=refusals)
        try:
            work = PassManager(pipeline, ctx).run(work).graph
        except EdgecError as exc:
            report.warnings.append(f"the import path failed, checking the model as loaded: {exc}")
            work = graph.copy()
    report.nodes_after = len(work.nodes)
    refused = set()
    for error in refusals:
        refused.add(error.node_name)
        fix = _fix_for_refusal(error, work)
        report.problems.append(Problem(error.node_name, error.op_type, error.reason, fix))
    report.problems.extend(_lowering_problems(work, refused))
    if not symbolic:
        report.problems.extend(_dynamic_shape_problems(work, refused))
    return report


def _fix_for_refusal(error: UnsupportedNodeError, graph: EdgeGraph) -> str:
    reason = error.reason
    node = next((node for node in graph.nodes if node.name == error.node_name), None)
    run_time = "computed at run time" in reason or "data-dependent" in reason
    if node is not None and node.op == "Loop" and run_time:
        # Name the inputs the trip count or condition comes from, rather than a generic hint.
        values: set[str] = set()
        shapes: set[str] = set()
        for operand in node.inputs[:2]:
            if operand.name:
                operand_values, operand_shapes = _input_dependencies(operand)
                values |= operand_values
                shapes |= operand_shapes
        if values:
            names = sorted(values)
            return f"freeze input {', '.join(names)} with --freeze-input {names[0]}=VALUE"
        if shapes:
            return "fix the shape with --input-shape"
    if "sequence_lens" in reason:
        return f"{error.op_type} with sequence_lens is not supported; export the model without sequence_lens"
    if "--input-shape" in reason:
        return "fix the shape with --input-shape"
    if "--freeze-input" in reason:
        return "freeze the input it depends on with --freeze-input NAME=VALUE"
    if "max_trips" in reason:
        return "unroll it before the import path: --no-simplify -p 'unroll-loops{max_trips=N},import,default'"
    return f"edgec cannot lower this {error.op_type}; change the model (see the reason)"


def _lowering_problems(graph: EdgeGraph, refused: set[str]) -> list[Problem]:
    """Nodes the TVM frontend has no converter for (subgraphs included)."""
    from edgec.targets.tvm.frontend import unsupported_nodes

    model = graph.to_onnx()
    enclosing = dict(_enclosing_ifs(model.graph, None))
    problems = []
    for node_name, op_type, reason in unsupported_nodes(model):
        if node_name in refused:
            continue
        branch_of = enclosing.get(node_name)
        if branch_of is not None:
            fix = _fix_for_branch(graph, branch_of, op_type)
        elif op_type in _RECURRENT:
            fix = f"decompose-{op_type.lower()} should have removed it; run the import pipeline"
        else:
            fix = f"edgec has no lowering for op {op_type}"
        problems.append(Problem(node_name, op_type, reason, fix))
    return problems


def _enclosing_ifs(graph: onnx.GraphProto, top: str | None) -> Iterator[tuple[str, str]]:
    """(node name, name of the main-graph If/Loop it is nested in) for nodes inside subgraphs."""
    for node in graph.node:
        if top is not None:
            yield _node_label(node), top
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield from _enclosing_ifs(sub, top if top is not None else node.name)


def _node_label(node: onnx.NodeProto) -> str:
    # The same label the TVM frontend reports for a node: its name, else its first output.
    if node.name:
        return node.name
    outputs = [name for name in node.output if name]
    return f"<{node.op_type} -> {outputs[0]}>" if outputs else f"<unnamed {node.op_type}>"


def _fix_for_branch(graph: EdgeGraph, owner_name: str, op_type: str) -> str:
    owner = next((node for node in graph.nodes if node.name == owner_name), None)
    if owner is None or owner.op != "If":
        return f"edgec has no lowering for op {op_type} inside {owner_name}"
    values, shapes = _input_dependencies(owner.inputs[0])
    if values:
        flags = " ".join(f"--freeze-input {name}=VALUE" for name in sorted(values))
        return f"freeze input {', '.join(sorted(values))} with {flags} so that If '{owner_name}' folds away"
    if shapes:
        return f"fix the shape with --input-shape so that If '{owner_name}' folds away"
    return f"edgec has no lowering for op {op_type} (in a branch of If '{owner_name}')"


def _input_dependencies(tensor: gs.Tensor) -> tuple[set[str], set[str]]:
    """Graph inputs whose values, and whose shapes only, ``tensor`` is computed from."""
    values: set[str] = set()
    shapes: set[str] = set()
    seen: set[int] = set()
    stack = [(tensor, False)]
    while stack:
        current, through_shape = stack.pop()
        if id(current) in seen or isinstance(current, gs.Constant):
            continue
        seen.add(id(current))
        if not current.inputs:
            if current.name:
                (shapes if through_shape else values).add(current.name)
            continue
        producer = current.inputs[0]
        reads_shape = producer.op in ("Shape", "Size")
        stack.extend((parent, through_shape or reads_shape) for parent in producer.inputs)
    return values, shapes


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
        values, _ = _input_dependencies(operand)
        if values:
            names = sorted(values)
            fix = f"freeze input {', '.join(names)} with --freeze-input {names[0]}=VALUE"
        else:
            fix = "fix the shape with --input-shape (the shape is computed at run time)"
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
