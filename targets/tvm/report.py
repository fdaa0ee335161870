"""What the TVM lowering built for each node of a legal graph (``Lowered.nodes``).

Read from the legal graph itself, which says everything: an ``edgec.Integer*`` node is an integer
kernel of its kind (reported under the name and op of the float node it replaces), an
``edgec.PackedDequantize`` a weight kept at its width and decoded in the kernel that reads it, an
``edgec.SparseWeight`` a weight kept compressed and read so by its reader's sparse kernel, and
every other node goes through TVM's frontend in the dtype of its inputs (int8 data movement,
int8-dynamic ``MatMulInteger``, float16 or float32 arithmetic). A float node whose op has an
integer kernel says why it is float: the target's capability check, else ``group-qdq``'s refusal of
its group, else that the pipeline did not quantize it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from edgec.capabilities import Capabilities
from edgec.ir import EdgeGraph
from edgec.precision import planned
from edgec.targets.base import BuiltNode
from edgec.targets.integer.boundary import IntegerDequantize
from edgec.targets.integer.kernels import kind_of
from edgec.targets.legalize.group_qdq import refusals
from edgec.targets.tvm import sparse_layout
from edgec.targets.tvm.packed_layout import HALF_BITS, PACKED_DOMAIN, PACKED_OP, PackedWeight, spec_of

__all__ = ["built_nodes"]

FRONTEND = "relax frontend"
_DYNAMIC_OPS = ("MatMulInteger", "ConvInteger")
# Ops through which a decoded weight reaches its reader unchanged in storage terms.
_WEIGHT_VIEWS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
_CONSTANT_STORAGE = {"float32": "float32", "float16": "float16", "int8": "int8", "uint8": "int8"}


def _storage(spec: PackedWeight) -> str:
    if spec.bits == HALF_BITS:
        return "float16"
    return {8: "int8", 4: "int4", 2: "int2", 1: "binary"}[spec.bits]


def _is_packed(node: gs.Node) -> bool:
    return node.domain == PACKED_DOMAIN and node.op == PACKED_OP


class _Graph:
    """What the report needs to know about tensors: which are int8 and how weights are stored."""

    def __init__(self, graph: EdgeGraph) -> None:
        self.int8: set[int] = set()
        self.stored: dict[int, tuple[str, int]] = {}  # tensor → (storage, elements)
        for node in graph.nodes:  # topological order
            kind = kind_of(node)
            if _is_packed(node):
                spec = spec_of(node)
                self.stored[id(node.outputs[0])] = (_storage(spec), spec.count)
            elif sparse_layout.is_sparse(node):
                spec = sparse_layout.spec_of(node).spec
                self.stored[id(node.outputs[0])] = (
                    _CONSTANT_STORAGE[spec.dtype],
                    spec.rows * spec.row_length,
                )
            elif node.op in _WEIGHT_VIEWS and id(node.inputs[0]) in self.stored:
                self.stored[id(node.outputs[0])] = self.stored[id(node.inputs[0])]
            integer = kind is not None and not isinstance(kind, IntegerDequantize)
            if integer or (kind is None and self.data_is_int8(node)):
                self.int8.update(id(out) for out in node.outputs)

    def is_int8(self, tensor: gs.Tensor) -> bool:
        dtype = np.dtype(tensor.dtype).name if tensor.dtype is not None else ""
        return id(tensor) in self.int8 or dtype in ("int8", "uint8")

    def data_is_int8(self, node: gs.Node) -> bool:
        data = [t for t in node.inputs if t.name and not isinstance(t, gs.Constant)]
        return bool(data) and all(self.is_int8(t) for t in data)

    def weights(self, node: gs.Node) -> str:
        """Storage of the node's largest weight input (decoded or constant), empty for none."""
        found: list[tuple[int, str]] = []
        for tensor in node.inputs:
            if id(tensor) in self.stored:
                storage, count = self.stored[id(tensor)]
                found.append((count, storage))
            elif isinstance(tensor, gs.Constant) and tensor.dtype is not None:
                storage = _CONSTANT_STORAGE.get(np.dtype(tensor.dtype).name)
                count = int(np.prod(tensor.shape)) if tensor.shape is not None else 0
                if storage and count > 1:
                    found.append((count, storage))
        return max(found)[1] if found else ""


def _precision(node: gs.Node, tensors: _Graph) -> str:
    if node.op in _DYNAMIC_OPS:
        return "int8-dynamic"
    if any(t.dtype is not None and np.dtype(t.dtype) == np.float16 for t in node.inputs if t.name):
        return "float16"
    return "int8" if tensors.data_is_int8(node) else "float32"


def _sparse_weight(node: gs.Node) -> sparse_layout.Encoded | None:
    """The sparse weight a conv/matmul reads (input 1), ``None`` when it reads none."""
    producer = sparse_layout.sparse_producer(node.inputs[1]) if len(node.inputs) > 1 else None
    return sparse_layout.spec_of(producer) if producer is not None else None


def built_nodes(graph: EdgeGraph, capabilities: Capabilities) -> dict[str, BuiltNode]:
    """Node name → what the lowering builds for it, for every node of the legal graph that
    computes something (not ``Constant``)."""
    tensors = _Graph(graph)
    refused = refusals(graph)
    integer_ops = (
        capabilities.integer_kernels.ops if capabilities.integer_kernels is not None else frozenset()
    )
    # Only a quantized graph explains its float nodes (in a float build every node is float).
    quantized = bool(planned(graph)) or any(kind_of(node) is not None for node in graph.nodes)
    built: dict[str, BuiltNode] = {}
    for node in graph.nodes:
        kind = kind_of(node)
        if node.op == "Constant" and not node.domain:
            continue
        sparse = _sparse_weight(node)
        if kind is not None:
            kernel = kind.kernel + (f", sparse {sparse.label} weight (skips zeros)" if sparse else "")
            for name, op in kind.replaced(node):
                built[name] = BuiltNode(op, "int8", kind.weights(node), kernel)
        elif sparse_layout.is_sparse(node):
            encoded = sparse_layout.spec_of(node)
            storage = _CONSTANT_STORAGE[encoded.spec.dtype]
            readers = ", ".join(f"'{reader.name}'" for reader in node.outputs[0].outputs)
            kernel = (
                f"{encoded.label} sparse weight, {encoded.stored_bytes} of {node.attrs['dense_bytes']} B, "
                f"read compressed by the kernel of {readers}"
            )
            built[node.name] = BuiltNode(sparse_layout.SPARSE_OP, storage, storage, kernel)
        elif _is_packed(node):
            spec = spec_of(node)
            precision = "int8" if spec.integer else "float16" if spec.scale.dtype == np.float16 else "float32"
            kernel = "packed weight decode (inside the kernel that reads it, when it is a conv2d/matmul)"
            built[node.name] = BuiltNode(str(node.attrs["replaces"]), precision, _storage(spec), kernel)
        else:
            precision = _precision(node, tensors)
            reason = ""
            if quantized and precision in ("float32", "float16") and node.op in integer_ops:
                reason = (
                    capabilities.integer_refusal(node, graph)
                    or refused.get(node.name)
                    or "not quantized by the pipeline (no QDQ group around it)"
                )
            kernel = f"sparse {node.op} ({sparse.label} weight, skips zeros)" if sparse else FRONTEND
            built[node.name] = BuiltNode(node.op, precision, tensors.weights(node), kernel, reason)
    return built
