"""``EdgeGraph``: edgec's intermediate graph, an onnx-graphsurgeon graph plus model metadata.

Storage is onnx-graphsurgeon (nodes, tensors, constants); analyses that want a graph library use
the cached ``networkx`` view, which is rebuilt whenever the node structure changes.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs


@dataclass
class ModelInfo:
    """What an ONNX model carries besides its graph, kept so that export round-trips."""

    ir_version: int = 8
    producer_name: str = "edgec"
    producer_version: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    opset_imports: dict[str, int] = field(default_factory=dict)


class EdgeGraph:
    """An ONNX model being compiled: an onnx-graphsurgeon ``Graph`` plus its model metadata.

    Passes mutate ``graph.gs`` in place (or build a new ``EdgeGraph``); helpers here keep node
    names unique and give a ``networkx`` view that is invalidated automatically when nodes or
    their connections change.
    """

    def __init__(self, graph: gs.Graph, info: ModelInfo | None = None) -> None:
        self.gs = graph
        self.info = info or ModelInfo(opset_imports={"": int(graph.opset)})
        self._nx_cache: tuple[int, nx.DiGraph] | None = None
        self._name_counter = 0
        self.ensure_unique_node_names()

    # ----- conversion -------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> EdgeGraph:
        """Imports an ONNX model (its external data must already be loaded)."""
        opsets = {imp.domain: int(imp.version) for imp in model.opset_import}
        info = ModelInfo(
            ir_version=int(model.ir_version),
            producer_name=model.producer_name,
            producer_version=model.producer_version,
            model_version=int(model.model_version),
            doc_string=model.doc_string,
            metadata={p.key: p.value for p in model.metadata_props},
            opset_imports=opsets,
        )
        return cls(gs.import_onnx(model), info)

    def to_onnx(self) -> onnx.ModelProto:
        """Exports the graph as an ONNX model with the original metadata and opset imports."""
        self.gs.toposort()
        opsets = dict(self.info.opset_imports)
        opsets[""] = int(self.gs.opset)
        for node in self.gs.nodes:
            if node.domain and node.domain not in opsets:
                opsets[node.domain] = 1
        model = gs.export_onnx(self.gs, do_type_check=False)
        del model.opset_import[:]
        model.opset_import.extend(
            onnx.helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())
        )
        model.ir_version = self.info.ir_version
        model.producer_name = self.info.producer_name
        model.producer_version = self.info.producer_version
        model.model_version = self.info.model_version
        model.doc_string = self.info.doc_string
        del model.metadata_props[:]
        for key, value in sorted(self.info.metadata.items()):
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        return model

    def copy(self) -> EdgeGraph:
        """A deep copy that shares nothing with this graph."""
        return EdgeGraph(gs.import_onnx(self.to_onnx()), _copy.deepcopy(self.info))

    # ----- access ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.gs.name or "model"

    @property
    def nodes(self) -> list[gs.Node]:
        return self.gs.nodes

    @property
    def inputs(self) -> list[gs.Variable]:
        return self.gs.inputs

    @property
    def outputs(self) -> list[gs.Variable]:
        return self.gs.outputs

    @property
    def opset(self) -> int:
        return int(self.gs.opset)

    def tensors(self) -> dict[str, gs.Tensor]:
        """All tensors of the main graph by name."""
        return self.gs.tensors()

    def node(self, name: str) -> gs.Node:
        for node in self.gs.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def constants(self) -> Iterator[gs.Constant]:
        """Every constant tensor (initializer) used by the main graph, each once."""
        for tensor in self.tensors().values():
            if isinstance(tensor, gs.Constant):
                yield tensor

    @staticmethod
    def producer(tensor: gs.Tensor) -> gs.Node | None:
        return tensor.inputs[0] if tensor.inputs else None

    def consumers(self, tensor: gs.Tensor) -> list[gs.Node]:
        return list(tensor.outputs)

    def is_graph_output(self, tensor: gs.Tensor) -> bool:
        return any(tensor is out for out in self.gs.outputs)

    # ----- mutation helpers -----------------------------------------------------------------
    def fresh_name(self, prefix: str) -> str:
        """A tensor or node name not yet used in the graph."""
        taken = set(self.tensors()) | {node.name for node in self.gs.nodes}
        while True:
            self._name_counter += 1
            candidate = f"{prefix}_{self._name_counter}"
            if candidate not in taken:
                return candidate

    def add_constant(self, prefix: str, values: np.ndarray) -> gs.Constant:
        # np.ascontiguousarray would turn a 0-d array (a scalar) into shape [1].
        return gs.Constant(self.fresh_name(prefix), np.asarray(values, order="C"))

    def ensure_unique_node_names(self) -> None:
        """Names unnamed or duplicate nodes ``<op>_<n>`` so that errors and stats can name them."""
        seen: set[str] = set()
        for index, node in enumerate(self.gs.nodes):
            if not node.name or node.name in seen:
                base = f"{node.op}_{index}"
                name = base
                suffix = 0
                while name in seen:
                    suffix += 1
                    name = f"{base}_{suffix}"
                node.name = name
            seen.add(node.name)

    def cleanup(self) -> None:
        """Removes dead nodes and tensors and restores topological order."""
        self.gs.cleanup(remove_unused_graph_inputs=False).toposort()

    # ----- analyses ---------------------------------------------------------------------------
    def structure_key(self) -> int:
        """A hash of which nodes exist and which tensor objects they read and write (and of the
        graph's inputs and outputs): it changes whenever a node or a connection changes, or a
        tensor is replaced by another object (attribute edits in place do not change it)."""
        return hash(
            (
                tuple(
                    (id(node), tuple(map(id, node.inputs)), tuple(map(id, node.outputs)))
                    for node in self.gs.nodes
                ),
                tuple(map(id, self.gs.inputs)),
                tuple(map(id, self.gs.outputs)),
            )
        )

    def fingerprint(self) -> int:
        """A hash of what the graph computes, cheap to take: its structure (``structure_key``),
        every node's op and attributes, and the identity of every constant's values. Passes never
        change constant values in place (copies share them), so equal fingerprints mean the same
        graph; a pass that returns a new graph must leave its input's fingerprint unchanged."""

        def token(value: object) -> object:
            if isinstance(value, (gs.Graph, gs.Tensor, np.ndarray)):
                return id(value)
            if isinstance(value, (list, tuple)):
                return tuple(token(v) for v in value)
            return repr(value)

        nodes = tuple(
            (node.op, node.domain, tuple(sorted((k, token(v)) for k, v in node.attrs.items())))
            for node in self.gs.nodes
        )
        constants = tuple(
            (name, id(tensor._values))
            for name, tensor in self.tensors().items()
            if isinstance(tensor, gs.Constant)
        )
        return hash((self.structure_key(), nodes, constants))

    @property
    def nx(self) -> nx.DiGraph:
        """Node-level dataflow graph (node name → node name, edge attribute ``tensor``).

        Cached; rebuilt automatically when nodes or their connections changed since last use.
        """
        key = self.structure_key()
        if self._nx_cache is None or self._nx_cache[0] != key:
            view = nx.DiGraph()
            for node in self.gs.nodes:
                view.add_node(node.name, op=node.op, node=node)
            for node in self.gs.nodes:
                for tensor in node.outputs:
                    for consumer in tensor.outputs:
                        view.add_edge(node.name, consumer.name, tensor=tensor.name)
            self._nx_cache = (key, view)
        return self._nx_cache[1]

    def text(self) -> str:
        """The stable text form used in tests and ``--dump-after``."""
        from edgec.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"EdgeGraph({self.name!r}, {len(self.gs.nodes)} nodes)"
