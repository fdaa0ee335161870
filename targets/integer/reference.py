"""A numpy executor of a legal graph: the test oracle of the integer kernels.

Every ``edgec.Integer*`` node runs its kind's :meth:`~.kind.IntegerKind.reference` (TFLite's
requantization formulas written literally, where the kernels use the shift-only form), data
movement on int8 runs in numpy, an ``edgec.PackedDequantize`` decodes its bytes with
:func:`~edgec.targets.tvm.packed_layout.dequantize`, an ``edgec.SparseWeight`` its arrays with
:func:`~edgec.targets.tvm.sparse_layout.decode`, and a node of the float remainder (a final
Softmax) runs alone in onnxruntime. The reference reads the same nodes as the lowering, so the two
executors cannot disagree about a parameter. No tvm import.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph
from edgec.targets.integer.kernels import kind_of
from edgec.targets.integer.movement import Int8Movement, run_movement
from edgec.targets.tvm import sparse_layout
from edgec.targets.tvm.packed_layout import PACKED_DOMAIN, PACKED_OP, dequantize, packed_bytes, spec_of

__all__ = ["reference_difference", "run_reference"]

_MOVEMENT = frozenset(Int8Movement.float_ops)


def _run_float_node(node: gs.Node, args: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """A node of the float remainder, run alone in onnxruntime."""
    import onnxruntime as ort
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(args)]
    single = OnnxExporter.export_node(node)
    del single.input[:], single.output[:]
    single.input.extend(names)
    single.output.extend(f"out{i}" for i in range(len(node.outputs)))
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in zip(names, args, strict=True)
        if a is not None
    ]
    outputs = [onnx.ValueInfoProto(name=o) for o in single.output]
    model = helper.make_model(
        helper.make_graph([single], "float_node", inputs, outputs),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = 8
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {n: a for n, a in zip(names, args, strict=True) if a is not None})
    except (RuntimeError, ValueError) as err:  # onnxruntime's Fail/InvalidArgument derive from these
        raise EdgecError(f"the reference could not run float node {node.op} '{node.name}': {err}") from err


def _value(tensor: gs.Tensor, values: dict[str, Any]) -> Any:
    if not tensor.name:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return values[tensor.name]


def run_reference(
    graph: EdgeGraph, inputs: dict[str, np.ndarray], keep_all: bool = False
) -> dict[str, np.ndarray]:
    """Runs a legal graph in numpy with the integer kernels' arithmetic.

    Args:
        graph: The legal graph (after the target's legalization).
        inputs: Graph inputs by name.
        keep_all: Return every tensor (int8 intermediates included), not just the graph outputs.

    Returns:
        The graph outputs (or all tensors) by name.
    """
    values: dict[str, Any] = {}
    for tensor in graph.inputs:
        if tensor.name not in inputs:
            raise EdgecError(f"missing input '{tensor.name}'")
        values[tensor.name] = np.asarray(inputs[tensor.name])
    graph.gs.toposort()
    for node in graph.nodes:
        args = [_value(tensor, values) for tensor in node.inputs]
        kind = kind_of(node)
        if kind is not None:
            results = [kind.reference(node, args[: kind.data_inputs])]
        elif node.domain == PACKED_DOMAIN and node.op == PACKED_OP:
            results = [dequantize(spec_of(node), packed_bytes(node))]
        elif sparse_layout.is_sparse(node):
            encoded = sparse_layout.spec_of(node)
            results = [sparse_layout.decode(encoded.spec, encoded.values, encoded.index)]
        elif node.op in _MOVEMENT and args[0] is not None and np.asarray(args[0]).dtype == np.int8:
            results = [run_movement(node, args)]
        else:
            results = _run_float_node(node, args, graph.opset)
        for tensor, value in zip(node.outputs, results, strict=False):
            values[tensor.name] = np.asarray(value)
    if keep_all:
        return values
    return {tensor.name: values[tensor.name] for tensor in graph.outputs}


def reference_difference(before: EdgeGraph, after: EdgeGraph, seed: int = 0) -> float:
    """Largest output difference between two legal graphs run by :func:`run_reference` on the
    same seeded random inputs (a rewrite of a legal graph that keeps the arithmetic gives 0)."""
    from edgec.verify import random_inputs

    feeds = random_inputs(before, seed=seed)
    expected, got = run_reference(before, feeds), run_reference(after, feeds)
    return max(
        (
            float(np.max(np.abs(got[name].astype(np.float64) - value), initial=0.0))
            for name, value in expected.items()
        ),
        default=0.0,
    )
