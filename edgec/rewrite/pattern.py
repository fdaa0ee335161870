"""Patterns: small trees that match the producers of a tensor.

``Op("BatchNormalization", Op("Conv", Var("x"), Const("w"), Optional(Const("b")), name="conv"),
Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn")`` matches a Conv whose only
consumer is a BatchNormalization with constant parameters, and binds every named part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class Var:
    """Any tensor (a graph input, an activation or a constant)."""

    name: str


@dataclass(frozen=True)
class Const:
    """A constant tensor (an initializer)."""

    name: str


@dataclass(frozen=True)
class Optional:
    """An input that may be absent (missing or empty-named); binds ``None`` when absent."""

    pattern: Var | Const | Op


@dataclass(frozen=True)
class Op:
    """A node of one of ``op`` types whose inputs match ``inputs`` position by position.

    A non-root node must feed only the pattern (no other consumer, not a graph output), so that
    replacing the match cannot change any other value. ``commutative`` tries both orders of a
    two-input op. ``any_inputs`` accepts whatever inputs the node has.
    """

    op: str | tuple[str, ...]
    inputs: tuple[Var | Const | Optional | Op, ...] = ()
    name: str | None = None
    commutative: bool = False
    any_inputs: bool = False

    def __init__(
        self,
        op: str | tuple[str, ...],
        *inputs: Var | Const | Optional | Op,
        name: str | None = None,
        commutative: bool = False,
        any_inputs: bool = False,
    ) -> None:
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "commutative", commutative)
        object.__setattr__(self, "any_inputs", any_inputs)

    def op_types(self) -> tuple[str, ...]:
        return (self.op,) if isinstance(self.op, str) else self.op


@dataclass
class Match:
    """What a pattern bound: nodes and tensors by name, the root node and its output tensors."""

    root: gs.Node
    nodes: dict[str, gs.Node] = field(default_factory=dict)
    tensors: dict[str, gs.Tensor | None] = field(default_factory=dict)
    matched: list[gs.Node] = field(default_factory=list)
    outputs: list[gs.Tensor] = field(default_factory=list)

    def __getitem__(self, name: str):
        if name in self.nodes:
            return self.nodes[name]
        return self.tensors[name]

    def const(self, name: str):
        """The numpy values of a bound constant (``None`` if the optional input was absent)."""
        tensor = self.tensors[name]
        return None if tensor is None else tensor.values


def _present(tensor: gs.Tensor | None) -> bool:
    return tensor is not None and bool(tensor.name)


def _bind_tensor(pattern: Var | Const, tensor: gs.Tensor, match: Match) -> bool:
    if isinstance(pattern, Const) and not isinstance(tensor, gs.Constant):
        return False
    bound = match.tensors.get(pattern.name, tensor)
    if bound is not tensor:  # the same name used twice must bind the same tensor
        return False
    match.tensors[pattern.name] = tensor
    return True


def _match_input(pattern, tensor: gs.Tensor | None, match: Match, graph_outputs: set[int]) -> bool:
    if isinstance(pattern, Optional):
        if not _present(tensor):
            if isinstance(pattern.pattern, (Var, Const)):
                match.tensors[pattern.pattern.name] = None
            return True
        pattern = pattern.pattern
    if not _present(tensor):
        return False
    if isinstance(pattern, (Var, Const)):
        return _bind_tensor(pattern, tensor, match)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or len(tensor.outputs) != 1 or id(tensor) in graph_outputs:
        return False
    if any(len(out.outputs) > 0 and out is not tensor for out in producer.outputs):
        return False
    if any(id(out) in graph_outputs for out in producer.outputs):
        return False
    return _match_node(pattern, producer, match, graph_outputs)


def _match_node(pattern: Op, node: gs.Node, match: Match, graph_outputs: set[int]) -> bool:
    if node.op not in pattern.op_types() or any(node is m for m in match.matched):
        return False
    if pattern.any_inputs:
        orders = [()]
    else:
        required = sum(1 for p in pattern.inputs if not isinstance(p, Optional))
        if not required <= len(node.inputs) <= len(pattern.inputs):
            return False
        orders = [pattern.inputs]
        if pattern.commutative and len(pattern.inputs) == 2:
            orders.append(pattern.inputs[::-1])
    for order in orders:
        trial = Match(match.root, dict(match.nodes), dict(match.tensors), [*match.matched, node], [])
        # any_inputs: the node's inputs are not part of the pattern (none is matched or bound).
        padded = [] if pattern.any_inputs else list(node.inputs) + [None] * (len(order) - len(node.inputs))
        if all(_match_input(p, t, trial, graph_outputs) for p, t in zip(order, padded, strict=True)):
            if pattern.name:
                trial.nodes[pattern.name] = node
            match.nodes, match.tensors, match.matched = trial.nodes, trial.tensors, trial.matched
            return True
    return False


def match_pattern(pattern: Op, node: gs.Node, graph_outputs: set[int]) -> Match | None:
    """Matches ``pattern`` with ``node`` as its root; ``None`` if it does not match."""
    match = Match(root=node)
    if _match_node(pattern, node, match, graph_outputs):
        match.outputs = list(node.outputs)
        return match
    return None
