"""The unrolled cells: per direction and step, the MatMul/Add/Sigmoid/Tanh/Mul chain of LSTM, GRU
and RNN, and :func:`decompose` which writes it in place of the node."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph
from edgec.passes.recurrent.layer import Layer


class _Builder:
    """Creates the replacement nodes, named after the decomposed node, with shared constants."""

    def __init__(self, graph: EdgeGraph, prefix: str, dtype: np.dtype) -> None:
        self.graph = graph
        self.prefix = prefix
        self.dtype = dtype
        self.nodes: list[gs.Node] = []
        self._constants: dict[tuple, gs.Constant] = {}
        self._taken = set(graph.tensors()) | {node.name for node in graph.nodes}
        self._counter = 0

    def _fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{self.prefix}/{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def const(self, hint: str, values: np.ndarray) -> gs.Constant:
        values = np.asarray(values, order="C")  # ascontiguousarray would turn a scalar into [1]
        key = (values.dtype.str, values.shape, values.tobytes())
        if key not in self._constants:
            self._constants[key] = gs.Constant(self._fresh(hint), values)
        return self._constants[key]

    def ints(self, *values: int) -> gs.Constant:
        return self.const("i", np.array(values, np.int64))

    def op(
        self, op: str, inputs: list[gs.Tensor], hint: str, out: gs.Tensor | None = None, **attrs: object
    ) -> gs.Tensor:
        output = out if out is not None else gs.Variable(self._fresh(hint))
        name = self._fresh(f"{op}_{hint}")
        self.nodes.append(gs.Node(op, name=name, attrs=attrs, inputs=inputs, outputs=[output]))
        return output

    def gather(self, data: gs.Tensor, index: int, axis: int, hint: str) -> gs.Tensor:
        return self.op("Gather", [data, self.const("t", np.array(index, np.int64))], hint, axis=axis)

    def slice_gates(self, data: gs.Tensor, start: int, end: int, hint: str) -> gs.Tensor:
        return self.op("Slice", [data, self.ints(start), self.ints(end), self.ints(1)], hint)

    def unsqueeze(self, data: gs.Tensor, axes: list[int], hint: str) -> gs.Tensor:
        if self.graph.opset >= 13:
            return self.op("Unsqueeze", [data, self.ints(*axes)], hint)
        return self.op("Unsqueeze", [data], hint, axes=axes)

    def add(self, a: gs.Tensor | None, b: gs.Tensor, hint: str) -> gs.Tensor:
        return b if a is None else self.op("Add", [a, b], hint)


def _project_inputs(
    builder: _Builder, xs: gs.Tensor, w: np.ndarray, bias: np.ndarray, hint: str
) -> gs.Tensor:
    """``X · Wᵀ + bias`` for all steps at once: ``[seq, batch, rows(W)]``."""
    product = builder.op("MatMul", [xs, builder.const("WT", w.T.astype(builder.dtype))], hint)
    return builder.op("Add", [product, builder.const("bias", bias.astype(builder.dtype))], hint)


def _initial(builder: _Builder, layer: Layer, state: gs.Tensor | None, d: int, hint: str) -> gs.Tensor | None:
    if state is None:
        return None
    # initial_h is [directions, batch, H] (layout 0) or [batch, directions, H] (layout 1).
    return builder.gather(state, d, 1 if layer.layout else 0, hint)


def _lstm_direction(builder: _Builder, layer: Layer, xs: gs.Tensor, d: int, steps: list[int]):
    """i, o, f = sigmoid(Xt·Wᵀ + H·Rᵀ + Wb + Rb)[i,o,f]; g = tanh(…)[c]; C = f⊙C + i⊙g; H = o⊙tanh(C)."""
    hidden = layer.hidden
    w, r, b = layer.w[d], layer.r[d], layer.b[d]
    projected = _project_inputs(builder, xs, w, b[: 4 * hidden] + b[4 * hidden :], "x_proj")
    recurrence = builder.const("RT", r.T.astype(builder.dtype))
    h = _initial(builder, layer, layer.initial_h, d, "h0")
    c = _initial(builder, layer, layer.initial_c, d, "c0")
    hs: dict[int, gs.Tensor] = {}
    for t in steps:
        gates = builder.gather(projected, t, 0, f"x{t}")
        if h is not None:
            gates = builder.op("Add", [gates, builder.op("MatMul", [h, recurrence], f"hr{t}")], f"gates{t}")
        # ONNX gate order is i, o, f, c: the three sigmoid gates are contiguous.
        sig = builder.op("Sigmoid", [builder.slice_gates(gates, 0, 3 * hidden, f"iof{t}")], f"iof{t}")
        cand = builder.op("Tanh", [builder.slice_gates(gates, 3 * hidden, 4 * hidden, f"g{t}")], f"g{t}")
        i = builder.slice_gates(sig, 0, hidden, f"i{t}")
        o = builder.slice_gates(sig, hidden, 2 * hidden, f"o{t}")
        f = builder.slice_gates(sig, 2 * hidden, 3 * hidden, f"f{t}")
        ig = builder.op("Mul", [i, cand], f"ig{t}")
        c = ig if c is None else builder.op("Add", [builder.op("Mul", [f, c], f"fc{t}"), ig], f"c{t}")
        h = builder.op("Mul", [o, builder.op("Tanh", [c], f"tc{t}")], f"h{t}")
        hs[t] = h
    return hs, h, c


def _gru_direction(builder: _Builder, layer: Layer, xs: gs.Tensor, d: int, steps: list[int]):
    """z, r = sigmoid(Xt·Wᵀ + H·Rᵀ + Wb + Rb)[z,r]; h̃ = tanh(Xt·Whᵀ + (r⊙H)·Rhᵀ + Rbh + Wbh), or with
    linear_before_reset tanh(Xt·Whᵀ + r⊙(H·Rhᵀ + Rbh) + Wbh); H' = (1 - z)⊙h̃ + z⊙H = h̃ + z⊙(H - h̃)."""
    hidden = layer.hidden
    w, r, b = layer.w[d], layer.r[d], layer.b[d]
    wb, rb = b[: 3 * hidden], b[3 * hidden :]
    xzr = _project_inputs(builder, xs, w[: 2 * hidden], wb[: 2 * hidden] + rb[: 2 * hidden], "xzr")
    rbh = rb[2 * hidden :]
    # Without linear_before_reset, Rbh is added outside the reset product, so it folds into Xh's bias.
    h_bias = wb[2 * hidden :] + (0 if layer.linear_before_reset else rbh)
    xh = _project_inputs(builder, xs, w[2 * hidden :], h_bias, "xh")
    h = _initial(builder, layer, layer.initial_h, d, "h0")
    hs: dict[int, gs.Tensor] = {}
    rzr = builder.const("RzrT", r[: 2 * hidden].T.astype(builder.dtype))
    rh = builder.const("RhT", r[2 * hidden :].T.astype(builder.dtype))
    rbh_const = builder.const("Rbh", rbh.astype(builder.dtype))
    for t in steps:
        gates = builder.gather(xzr, t, 0, f"xzr{t}")
        if h is not None:
            gates = builder.op("Add", [gates, builder.op("MatMul", [h, rzr], f"hzr{t}")], f"zr{t}")
        zr = builder.op("Sigmoid", [gates], f"zr{t}")
        z = builder.slice_gates(zr, 0, hidden, f"z{t}")
        reset = builder.slice_gates(zr, hidden, 2 * hidden, f"r{t}")
        x_h = builder.gather(xh, t, 0, f"xh{t}")
        if layer.linear_before_reset:
            recurrent = (
                rbh_const
                if h is None
                else builder.op("Add", [builder.op("MatMul", [h, rh], f"hh{t}"), rbh_const], f"hh{t}")
            )
            pre = builder.op("Add", [x_h, builder.op("Mul", [reset, recurrent], f"rhh{t}")], f"pre{t}")
        elif h is None:
            pre = x_h
        else:
            reset_h = builder.op("Mul", [reset, h], f"rh{t}")
            pre = builder.op("Add", [x_h, builder.op("MatMul", [reset_h, rh], f"rhh{t}")], f"pre{t}")
        cand = builder.op("Tanh", [pre], f"cand{t}")
        if h is None:
            h = builder.op("Sub", [cand, builder.op("Mul", [z, cand], f"zc{t}")], f"h{t}")
        else:
            delta = builder.op("Mul", [z, builder.op("Sub", [h, cand], f"d{t}")], f"zd{t}")
            h = builder.op("Add", [cand, delta], f"h{t}")
        hs[t] = h
    return hs, h, None


def _rnn_direction(builder: _Builder, layer: Layer, xs: gs.Tensor, d: int, steps: list[int]):
    """H = tanh(Xt·Wᵀ + H·Rᵀ + Wb + Rb)."""
    hidden = layer.hidden
    w, r, b = layer.w[d], layer.r[d], layer.b[d]
    projected = _project_inputs(builder, xs, w, b[:hidden] + b[hidden:], "x_proj")
    recurrence = builder.const("RT", r.T.astype(builder.dtype))
    h = _initial(builder, layer, layer.initial_h, d, "h0")
    hs: dict[int, gs.Tensor] = {}
    for t in steps:
        pre = builder.gather(projected, t, 0, f"x{t}")
        if h is not None:
            pre = builder.op("Add", [pre, builder.op("MatMul", [h, recurrence], f"hr{t}")], f"pre{t}")
        h = builder.op("Tanh", [pre], f"h{t}")
        hs[t] = h
    return hs, h, None


_DIRECTION = {"LSTM": _lstm_direction, "GRU": _gru_direction, "RNN": _rnn_direction}


def _zero_state(builder: _Builder, layer: Layer) -> gs.Tensor:
    return builder.const("zeros", np.zeros((layer.batch, layer.hidden), builder.dtype))


def decompose(graph: EdgeGraph, layer: Layer) -> None:
    """Replaces ``layer.node`` in ``graph`` by its unrolled computation, writing the same outputs."""
    node = layer.node
    builder = _Builder(graph, node.name, layer.w.dtype)
    xs = layer.x
    if layer.layout:
        xs = builder.op("Transpose", [xs], "x_seq_major", perm=[1, 0, 2])
    outputs = [tensor if tensor.name else None for tensor in node.outputs]
    outputs += [None] * (3 - len(outputs))
    y, y_h, y_c = outputs
    per_direction = []
    for d, direction in enumerate(layer.directions):
        steps = list(range(layer.seq)) if direction == "forward" else list(range(layer.seq - 1, -1, -1))
        hs, h_last, c_last = _DIRECTION[node.op](builder, layer, xs, d, steps)
        if h_last is None:  # zero-length sequence: the states stay the initial ones
            h_last = _zero_state(builder, layer)
        if node.op == "LSTM" and c_last is None:
            c_last = _zero_state(builder, layer)
        per_direction.append((hs, h_last, c_last))
    node.outputs.clear()
    if y is not None:
        directions = []
        for hs, _, _ in per_direction:
            steps = [builder.unsqueeze(hs[t], [0, 1], f"y{t}") for t in range(layer.seq)]
            directions.append(builder.op("Concat", steps, "y_dir", axis=0))  # [seq, 1, batch, H]
        if layer.layout:
            stacked = builder.op("Concat", directions, "y", axis=1)
            builder.op("Transpose", [stacked], "y", out=y, perm=[2, 0, 1, 3])
        else:
            builder.op("Concat", directions, "y", out=y, axis=1)
    for index, out in ((1, y_h), (2, y_c)):
        if out is None:
            continue
        # Y_h/Y_c are [directions, batch, H] (layout 0) or [batch, directions, H] (layout 1).
        axis = 1 if layer.layout else 0
        states = [builder.unsqueeze(states[index], [axis], "state") for states in per_direction]
        builder.op("Concat", states, "state", out=out, axis=axis)
    graph.gs.nodes.remove(node)
    graph.gs.nodes.extend(builder.nodes)
