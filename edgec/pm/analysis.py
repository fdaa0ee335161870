"""The analysis manager: graph analyses computed once, cached, and dropped when a pass changes
the graph (MLIR's analysis manager).

An analysis is a named function of a graph (``shapes``, ``cost``, ``liveness`` ...). Passes ask
``ctx.analyses.get("shapes", graph)`` instead of recomputing; the pass manager invalidates a
graph's analyses after every pass that changed it, except those the pass declares it preserves.
A cached result is also dropped when the graph's node structure changed since it was computed, so
a pass that rewires nodes and asks again gets a fresh answer; a pass that changes only attributes
or constant values in place and needs an analysis again calls ``invalidate`` itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, graph_cost, infer_shapes, peak_live_bytes


@dataclass(frozen=True)
class Analysis:
    """A registered analysis: its name, what it needs first, and the function that computes it."""

    name: str
    compute: Callable[[EdgeGraph, AnalysisManager], Any]
    requires: tuple[str, ...] = ()
    description: str = ""


_ANALYSES: dict[str, Analysis] = {}


def register_analysis(
    name: str, requires: tuple[str, ...] = (), description: str = ""
) -> Callable[[Callable[[EdgeGraph, AnalysisManager], Any]], Callable[[EdgeGraph, AnalysisManager], Any]]:
    """Decorator registering ``compute(graph, analyses)`` as the analysis ``name``."""

    def decorate(compute: Callable[[EdgeGraph, AnalysisManager], Any]) -> Callable:
        if name in _ANALYSES and _ANALYSES[name].compute is not compute:
            raise ValueError(f"two analyses are named {name!r}")
        _ANALYSES[name] = Analysis(name, compute, requires, description)
        return compute

    return decorate


def all_analyses() -> dict[str, Analysis]:
    return dict(sorted(_ANALYSES.items()))


class AnalysisManager:
    """Caches analyses per graph object; see the module docstring for when they are dropped."""

    def __init__(self) -> None:
        # Weak keys: a graph a pass discarded takes its analyses with it.
        self._cache: weakref.WeakKeyDictionary[EdgeGraph, dict[str, tuple[int, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self.computed: dict[str, int] = {}

    def get(self, name: str, graph: EdgeGraph) -> Any:
        """The analysis ``name`` of ``graph``, computed now or taken from the cache."""
        analysis = _ANALYSES.get(name)
        if analysis is None:
            raise EdgecError(f"unknown analysis '{name}'; available: {', '.join(sorted(_ANALYSES))}")
        for required in analysis.requires:
            self.get(required, graph)
        entries = self._cache.setdefault(graph, {})
        key = graph.structure_key()
        cached = entries.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = analysis.compute(graph, self)
        # Computing may annotate the graph (shapes) but must not rewire it: read the key again so
        # that an analysis never caches a key its own computation made stale.
        entries[name] = (graph.structure_key(), value)
        self.computed[name] = self.computed.get(name, 0) + 1
        return value

    def cached(self, name: str, graph: EdgeGraph) -> bool:
        """Whether ``name`` is cached and current for ``graph``."""
        entry = self._cache.get(graph, {}).get(name)
        return entry is not None and entry[0] == graph.structure_key()

    def invalidate(self, graph: EdgeGraph, preserved: frozenset[str] = frozenset()) -> None:
        """Drops the analyses of ``graph`` except ``preserved`` (and those only they depend on)."""
        entries = self._cache.get(graph)
        if not entries:
            return
        for name in list(entries):
            analysis = _ANALYSES.get(name)
            needs = {name, *(analysis.requires if analysis else ())}
            if not needs <= preserved:
                del entries[name]

    def adopt(self, source: EdgeGraph, target: EdgeGraph, preserved: frozenset[str]) -> None:
        """Moves the ``preserved`` analyses of ``source`` to ``target`` (a pass returned a new graph
        that keeps them valid, e.g. an exact copy with one attribute changed)."""
        entries = self._cache.get(source, {})
        kept = {name: entry for name, entry in entries.items() if name in preserved}
        if kept:
            key = target.structure_key()
            self._cache.setdefault(target, {}).update({n: (key, v) for n, (_, v) in kept.items()})


@register_analysis("shapes", description="dtype and shape of every tensor (ONNX shape inference)")
def _shapes(graph: EdgeGraph, analyses: AnalysisManager) -> bool:
    # Annotates the tensors in place; the cached value only records that they are current. A
    # model ONNX inference cannot handle keeps the shapes it had: the analyses that need them
    # then refuse instead of guessing.
    try:
        infer_shapes(graph)
    except EdgecError:
        return False
    return True


@register_analysis("cost", requires=("shapes",), description="MACs, parameters and bytes per node")
def _cost(graph: EdgeGraph, analyses: AnalysisManager) -> Any:
    return graph_cost(graph)


@register_analysis("liveness", requires=("shapes",), description="peak bytes of live activations")
def _liveness(graph: EdgeGraph, analyses: AnalysisManager) -> int:
    return peak_live_bytes(graph)
