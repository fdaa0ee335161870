"""The storage of sparse weights: their formats, a numpy encoder and reference decoder, and the
``edgec.SparseWeight`` node of the legal graph that carries them.

The ``sparse-weights`` legalization (:mod:`edgec.targets.legalize.sparse_weights`) writes a weight
that is smaller compressed as :func:`sparse_node`; :mod:`.sparse_kernels` emits the conv/matmul
kernels that read it in that form; this module says what the bytes mean. No tvm import.

A weight is seen as a matrix of ``rows`` (its reader's output channels) by ``K`` (the weights one
output channel sums over), in the order the kernels walk it (``layout``):

* ``conv``: ``W[O, I, *spatial]`` → row ``o``, ``k = spatial_index · I + i`` (input channels
  innermost, so the N:M groups of ``prune-nm``, consecutive input channels, are consecutive in ``k``);
* ``matmul``: ``W[K, N]`` (``x @ W``) → row ``n``, column ``k``;
* ``matmul-transposed``: ``W[N, K]`` (Gemm with ``transB``) → row ``n``, column ``k``.

Formats (``values`` keep the weight's dtype, int8 or float32)::

    bitmap:  mask[r · ceil(K/8) + j] bit b  = (W[r, 8j + b] != 0)        (rows padded to whole bytes)
             values                         = the non-zeros, row-major
    nm:      every m consecutive weights of a row hold at most n non-zeros (N:M, e.g. 2:4);
             values[(r · K/m + g) · n + j]  = the j-th non-zero of group g (0 where a group has fewer)
             index[...]                     = its position in the group, packed at index_bits(m)
                                              bits with packed_layout.pack (low bits first)

Stored bytes, per weight of density ``d`` and element size ``s``: bitmap ``d·s + 1/8``, N:M
``(n/m)·(s + index_bits(m)/8)``; dense ``s``. An N:M slot a group leaves empty points at a zero
position of its group, so decoding scatters nothing over a kept weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError

from .packed_layout import pack, unpack

if TYPE_CHECKING:
    from edgec.ir import EdgeGraph

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "SPARSE_DOMAIN",
    "SPARSE_OP",
    "Encoded",
    "SparseWeight",
    "decode",
    "dense_of",
    "encode",
    "index_bits",
    "is_sparse",
    "nm_pattern",
    "rows_of",
    "sparse_node",
    "sparse_producer",
    "spec_of",
]

SPARSE_OP = "SparseWeight"
SPARSE_DOMAIN = "edgec"
FORMATS = ("bitmap", "nm")
LAYOUTS = ("conv", "matmul", "matmul-transposed")
# Group sizes an N:M weight may use: an index takes at most 4 bits.
NM_GROUPS = (4, 8, 16)


def index_bits(m: int) -> int:
    """Bits per stored N:M index: the smallest packable width (1, 2, 4) that holds ``m - 1``."""
    needed = max(1, (m - 1).bit_length())
    for bits in (1, 2, 4):
        if needed <= bits:
            return bits
    raise EdgecError(f"N:M groups of {m} need {needed}-bit indices; at most 16 per group are stored")


@dataclass(frozen=True)
class SparseWeight:
    """One sparse weight: what the kernels and the reference need besides its arrays.

    Attributes:
        name: The ``SparseWeight`` node (for messages and kernel names).
        format: ``bitmap`` or ``nm``.
        layout: How the dense weight maps to rows (see the module docstring).
        shape: The dense weight's shape, as its reader reads it.
        dtype: ``int8`` or ``float32``.
        n, m: The N:M pattern (``nm`` only; 0 for ``bitmap``).
    """

    name: str
    format: str
    layout: str
    shape: tuple[int, ...]
    dtype: str
    n: int = 0
    m: int = 0

    @property
    def rows(self) -> int:
        return self.shape[1] if self.layout == "matmul" else self.shape[0]

    @property
    def row_length(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) // self.rows

    @property
    def mask_bytes_per_row(self) -> int:
        return -(-self.row_length // 8)

    @property
    def slots_per_row(self) -> int:
        """N:M value slots of one row (``K / m · n``)."""
        return self.row_length // self.m * self.n

    @property
    def dense_bytes(self) -> int:
        return self.rows * self.row_length * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Encoded:
    """A weight in one sparse format: its spec, the value array and the index array (the bitmap,
    or the packed N:M positions)."""

    spec: SparseWeight
    values: np.ndarray
    index: np.ndarray

    @property
    def stored_bytes(self) -> int:
        return int(self.values.nbytes + self.index.nbytes)

    @property
    def label(self) -> str:
        """``bitmap``, or the N:M pattern (``2:4``)."""
        return f"{self.spec.n}:{self.spec.m}" if self.spec.format == "nm" else self.spec.format


def rows_of(weight: np.ndarray, layout: str) -> np.ndarray:
    """The ``[rows, K]`` matrix of a dense weight, in the kernels' walking order."""
    if layout == "conv":
        order = (0, *range(2, weight.ndim), 1)
        return np.ascontiguousarray(weight.transpose(order)).reshape(weight.shape[0], -1)
    if layout == "matmul":
        return np.ascontiguousarray(weight.T)
    if layout == "matmul-transposed":
        return np.ascontiguousarray(weight)
    raise EdgecError(f"unknown sparse layout '{layout}'; known: {', '.join(LAYOUTS)}")


def dense_of(rows: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`rows_of`."""
    if layout == "conv":
        moved = rows.reshape(shape[0], *shape[2:], shape[1])
        return np.ascontiguousarray(np.moveaxis(moved, -1, 1))
    if layout == "matmul":
        return np.ascontiguousarray(rows.T)
    return np.ascontiguousarray(rows.reshape(shape))


def nm_pattern(rows: np.ndarray) -> tuple[int, int] | None:
    """The smallest-storage ``(n, m)`` the weight fits, over groups of 4, 8 and 16 weights along
    its rows (``n`` = the most non-zeros of any group); ``None`` when no group size leaves a zero
    in every group."""
    best: tuple[float, int, int] | None = None
    length = rows.shape[1]
    for m in NM_GROUPS:
        if length % m:
            continue
        n = int((rows.reshape(rows.shape[0], -1, m) != 0).sum(axis=2).max(initial=0))
        n = max(n, 1)
        if n >= m:
            continue
        per_weight = n / m * (rows.dtype.itemsize + index_bits(m) / 8)
        if best is None or per_weight < best[0]:
            best = (per_weight, n, m)
    return None if best is None else (best[1], best[2])


def encode(weight: np.ndarray, spec: SparseWeight) -> Encoded:
    """The weight in ``spec.format``.

    Raises:
        EdgecError: when an N:M spec does not fit the weight (a group has more than n non-zeros).
    """
    rows = rows_of(np.asarray(weight), spec.layout)
    if spec.format == "bitmap":
        bits = np.zeros((rows.shape[0], spec.mask_bytes_per_row * 8), bool)
        bits[:, : rows.shape[1]] = rows != 0
        mask = np.packbits(bits, axis=1, bitorder="little").reshape(-1)
        return Encoded(spec, rows[rows != 0].astype(spec.dtype), mask.astype(np.uint8))
    n, m = spec.n, spec.m
    groups = rows.reshape(rows.shape[0], -1, m)
    kept = groups != 0
    if rows.shape[1] % m or kept.sum(axis=2).max(initial=0) > n:
        raise EdgecError(f"weight '{spec.name}' does not fit {n}:{m} along its rows")
    # Non-zero positions first (stable), then zero positions: the first n slots of each group.
    order = np.argsort(~kept, axis=2, kind="stable")[:, :, :n]
    values = np.take_along_axis(groups, order, axis=2).astype(spec.dtype)
    return Encoded(spec, values.reshape(-1), pack(order.reshape(-1), index_bits(m)))


def decode(spec: SparseWeight, values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """numpy reference: the dense weight (``spec.shape``, ``spec.dtype``)."""
    rows = np.zeros((spec.rows, spec.row_length), spec.dtype)
    if spec.format == "bitmap":
        bits = np.unpackbits(np.asarray(index, np.uint8).reshape(spec.rows, -1), axis=1, bitorder="little")
        keep = bits[:, : spec.row_length].astype(bool)
        rows[keep] = np.asarray(values)
    else:
        groups = rows.reshape(spec.rows, -1, spec.m)
        slots = spec.rows * spec.slots_per_row
        positions = unpack(index, index_bits(spec.m), False, slots).astype(np.int64)
        positions = positions.reshape(spec.rows, -1, spec.n)
        stored = np.asarray(values).reshape(spec.rows, -1, spec.n)
        np.put_along_axis(groups, positions, stored, axis=2)
        rows = groups.reshape(spec.rows, spec.row_length)
    return dense_of(rows, spec.layout, spec.shape)


# --------------------------------------------------------------------------------------------
# The legal graph's node
# --------------------------------------------------------------------------------------------


def sparse_node(encoded: Encoded, output: gs.Variable, dense_bytes: int, graph: EdgeGraph) -> gs.Node:
    """``SparseWeight(values, index)`` writing the dense weight ``output``; the spec and the
    stored and dense bytes as attributes."""
    spec = encoded.spec
    inputs: list[gs.Tensor] = [
        graph.add_constant(f"{spec.name}_values", encoded.values),
        graph.add_constant(f"{spec.name}_{'mask' if spec.format == 'bitmap' else 'index'}", encoded.index),
    ]
    attrs = {
        "format": spec.format,
        "layout": spec.layout,
        "shape": list(spec.shape),
        "n": spec.n,
        "m": spec.m,
        "dense_bytes": dense_bytes,
        "stored_bytes": encoded.stored_bytes,
    }
    return gs.Node(
        SPARSE_OP, name=spec.name, domain=SPARSE_DOMAIN, attrs=attrs, inputs=inputs, outputs=[output]
    )


def is_sparse(node: gs.Node | None) -> bool:
    return node is not None and node.domain == SPARSE_DOMAIN and node.op == SPARSE_OP


def spec_of(node: gs.Node) -> Encoded:
    """The :class:`Encoded` weight a ``SparseWeight`` node holds."""
    attrs = node.attrs
    values = np.asarray(node.inputs[0].values)
    spec = SparseWeight(
        name=node.name,
        format=str(attrs["format"]),
        layout=str(attrs["layout"]),
        shape=tuple(int(d) for d in attrs["shape"]),
        dtype=values.dtype.name,
        n=int(attrs["n"]),
        m=int(attrs["m"]),
    )
    return Encoded(spec, values, np.asarray(node.inputs[1].values))


def sparse_producer(tensor: gs.Tensor | None) -> gs.Node | None:
    """The ``SparseWeight`` node that writes ``tensor``, if one does."""
    producer = tensor.inputs[0] if tensor is not None and tensor.inputs else None
    return producer if is_sparse(producer) else None
