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
from onnx_graphsurgeon.ir.tensor import LazyValues

from edgec.ir.export import export_functions, fill_graph


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

    def to_onnx(self, *, weight_limit: int | None = None) -> onnx.ModelProto:
        """Exports the graph as an ONNX model with the original metadata and opset imports.

        Args:
            weight_limit: constants of more than this many bytes become typed graph inputs
                instead of initializers, so no weight bytes are copied (what shape inference
                reads); ``None`` exports every weight.
        """
        self.gs.toposort()
        opsets = dict(self.info.opset_imports)
        opsets[""] = int(self.gs.opset)
        for node in self.gs.nodes:
            if node.domain and node.domain not in opsets:
                opsets[node.domain] = 1
        model = onnx.ModelProto()
        fill_graph(model.graph, self.gs, weight_limit)
        model.functions.extend(export_functions(self.gs))
        model.opset_import.extend(
            onnx.helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())
        )
        model.ir_version = self.info.ir_version
        model.producer_name = self.info.producer_name
        model.producer_version = self.info.producer_version
        model.model_version = self.info.model_version
        model.doc_string = self.info.doc_string
        for key, value in sorted(self.info.metadata.items()):
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        return model

    def copy(self) -> EdgeGraph:
        """A copy whose nodes, tensors and attributes are its own and whose constant values are
        shared with this graph, copy-on-write.

        Shared arrays are made read-only (lazily loaded initializers load once, read-only, for
        every copy), so writing one in place raises ``ValueError: assignment destination is
        read-only`` instead of changing the other graph: a pass gives a constant new values with
        ``tensor.values = new_array``, which only that graph sees.
        """
        for graph in _subgraphs(self.gs):
            for tensor in _constants_of(graph):
                _share(tensor)
        clone = self.gs.copy()
        for original, copied in _paired(self.gs, clone):
            _detach(original, copied)
        return EdgeGraph(clone, _copy.deepcopy(self.info))

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
            if isinstance(value, gs.Constant):
                return _values_token(value)
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
            (name, _values_token(tensor))
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


# ----- copy-on-write sharing of constant values -------------------------------------------------


class _SharedLazyValues(LazyValues):
    """A lazily loaded initializer shared by graph copies: loaded once, read-only, for all of them
    (a search over thousands of copies holds each weight once)."""

    def __init__(self, lazy: LazyValues) -> None:
        # Not LazyValues.__init__: it would parse again what ``lazy`` already read from the proto.
        self.tensor, self.shape, self.dtype, self.nbytes = lazy.tensor, lazy.shape, lazy.dtype, lazy.nbytes
        self._loaded: np.ndarray | None = None

    def load(self) -> np.ndarray:
        if self._loaded is None:
            values = super().load()
            values.flags.writeable = False
            self._loaded = values
        return self._loaded


def _values_token(tensor: gs.Constant) -> int:
    """What identifies a constant's values: the source proto of lazy ones (so that wrapping them
    for sharing keeps a graph's fingerprint), else the array object."""
    values = tensor._values
    return id(values.tensor) if isinstance(values, LazyValues) else id(values)


def _share(tensor: gs.Constant) -> None:
    values = tensor._values
    if isinstance(values, np.ndarray):
        values.flags.writeable = False
    elif type(values) is LazyValues:  # not SparseValues: the exporter treats those apart
        tensor._values = _SharedLazyValues(values)


def _subgraphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from _subgraphs(value)


def _constants_of(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Initializers of ``graph`` and constants held in node attributes (``Constant``'s value)."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            yield tensor
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Constant):
                yield value


def _paired(original: gs.Graph, copied: gs.Graph) -> Iterator[tuple[gs.Graph, gs.Graph]]:
    """The graph and its copy, then each subgraph and its copy (``gs.Graph.copy`` keeps order)."""
    yield original, copied
    for node, twin in zip(original.nodes, copied.nodes, strict=True):
        for key, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                yield from _paired(value, twin.attrs[key])


def _detach(original: gs.Graph, copied: gs.Graph) -> None:
    """Gives the copy what ``gs.Graph.copy`` shares, drops or pins: its own shape lists, attribute
    lists and attribute tensors; tensor types and data locations; and a constant's export dtype
    left to follow its values (``Constant.copy`` pins the current one, so new values of another
    dtype would not export)."""
    twins = copied.tensors()
    for name, tensor in original.tensors().items():
        twin = twins[name]
        if isinstance(tensor, gs.Constant):
            twin.data_location = tensor.data_location
            twin._export_dtype = tensor._export_dtype
        else:
            twin.type = tensor.type
            twin.shape = None if tensor.shape is None else list(tensor.shape)
    for node, twin in zip(original.nodes, copied.nodes, strict=True):
        for key, value in node.attrs.items():
            if isinstance(value, list):
                twin.attrs[key] = list(value)
            elif isinstance(value, gs.Constant):
                twin.attrs[key] = value.copy()
