"""Sparse kernels in Relax: conv2d and matmul that read an ``edgec.SparseWeight`` compressed.

The ``sparse-weights`` legalization gives a conv/matmul a weight in a sparse format
(:mod:`.sparse_layout`); its emission (``IntegerConv``/``IntegerMatMul`` in
:mod:`edgec.targets.integer`, a float ``Conv``/``Gemm``/``MatMul`` in :mod:`.translate`) calls
:func:`emit_sparse_conv2d` / :func:`emit_sparse_matmul` here instead of the dense op. The weight
stays in the artifact as its compressed arrays, and the kernel decodes it where it is used, one
output channel (row) at a time (rows in parallel when the layer is large enough):

1. decode: the row's non-zeros are walked once, into a short list of (where the weight reads
   in the flat input, its value) -- ``bitmap``: one mask byte per 8 weights, a zero byte skipped
   whole, then each set bit (lowest first, ``clz``); the row's first value is where the previous
   row's ended (rows in order) or the count of the mask's set bits before it (rows in parallel);
   ``nm``: every group of ``m`` weights has ``n`` slots and packed positions, empty slots skipped;
2. multiply: for each tile of up to 8 output pixels along a row of the output, the accumulators
   stay in registers while the list is walked: per non-zero, two loads (offset, value) and a
   multiply-add per pixel, with no test and no index arithmetic per multiply-accumulate.

Only non-zero weights are multiplied: at sparsity ``s`` the kernel does ``1 - s`` of the dense
kernel's multiply-accumulates, as scalar code (no SIMD dot product across input channels: the
dense int8 kernels' ``vpmaddwd``/``SMLAD`` do two or more per instruction). Integer accumulation is
exact, so int8 results are bit-exact with the dense kernel; float sums are reordered (within
float32 rounding). The requantization or bias that follows is fused into the kernel and runs per
row (:mod:`.sparse_schedule`), so the accumulator never holds more than a row.

Layout: the input is NCHW, padded first (with the zero point for int8, which is what real zero
quantizes to) and read flat; the output accumulator is NCHW. A matmul ``x[M, K] @ W`` is a 1x1
convolution whose output pixels are the ``M`` rows of ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .schedule_common import MIN_PARALLEL_ELEMENTS
from .sparse_layout import Encoded, index_bits, sparse_producer, spec_of

__all__ = [
    "KERNEL_PREFIX",
    "ROW_STARTS",
    "SPARSE_READERS",
    "Geometry",
    "conv_kernel",
    "emit_sparse_conv2d",
    "emit_sparse_matmul",
    "emit_sparse_reader",
]

# The kernel's block names start with this (the report and the tests look for it).
KERNEL_PREFIX = "edgec_sparse"
# The bitmap kernel's prologue block (the first value of each row).
ROW_STARTS = f"{KERNEL_PREFIX}_row_starts"
# Output pixels per tile: accumulators kept in registers while a row's non-zeros are walked.
MAX_TILE = 8
# Ops whose emission reads a SparseWeight at input 1 (float ones through emit_sparse_reader).
SPARSE_READERS = ("IntegerConv", "IntegerMatMul", "Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Geometry:
    """Where a kernel reads and writes, in elements of the flat input ``x``.

    The output is ``[batch, rows, out_height, out_width]``; output pixel ``(n, oh, ow)`` reads
    from ``n · batch_step + oh · row_step + ow · col_step``, plus, for the weight ``k`` of row
    ``o`` (``k = (kh · kernel_width + kw) · channels + c`` in group ``o // (rows / groups)``),
    ``group · group_step + c · channel_step + kh · kh_step + kw · kw_step``.
    """

    batch: int
    rows: int
    out_height: int
    out_width: int
    kernel_width: int
    channels: int  # input channels per group
    groups: int
    batch_step: int
    row_step: int
    col_step: int
    group_step: int
    channel_step: int
    kh_step: int
    kw_step: int

    @property
    def tile(self) -> int:
        return min(MAX_TILE, self.out_width)

    @property
    def tiles(self) -> int:
        return -(-self.out_width // self.tile)

    def input_size(self, kernel_height: int) -> int:
        """Elements the kernel may read (the last tile reads up to a tile past the output width)."""
        last_pixel = (self.batch - 1) * self.batch_step + (self.out_height - 1) * self.row_step
        last_pixel += (self.tiles * self.tile - 1) * self.col_step
        last_weight = (self.groups - 1) * self.group_step + (self.channels - 1) * self.channel_step
        last_weight += (kernel_height - 1) * self.kh_step + (self.kernel_width - 1) * self.kw_step
        return last_pixel + last_weight + 1


def _row_nonzeros(encoded: Encoded) -> int:
    """The most non-zeros of any row (the size of a row's decoded list)."""
    spec = encoded.spec
    if spec.format == "bitmap":
        bits = np.unpackbits(encoded.index.reshape(spec.rows, -1), axis=1)
    else:
        bits = encoded.values.reshape(spec.rows, -1) != 0
    return max(1, int(bits.sum(axis=1).max(initial=0)))


def conv_kernel(encoded: Encoded, geometry: Geometry, x_size: int, x_dtype: str, acc_dtype: str) -> Any:
    """The TIR kernel ``(x, values, index) -> out`` for one sparse weight (see the module
    docstring); ``x`` is flat (``x_size`` elements), ``out`` the ``acc_dtype`` accumulator."""
    from tvm.script import tirx as T

    spec, g = encoded.spec, geometry
    rows, n_batch, out_h, out_w = spec.rows, g.batch, g.out_height, g.out_width
    tile, tiles = g.tile, g.tiles
    in_group, out_group, kernel_w = g.channels, rows // g.groups, g.kernel_width
    n_values, n_index = int(encoded.values.size), int(encoded.index.size)
    v_dtype = str(encoded.values.dtype)
    row_bytes = spec.mask_bytes_per_row
    most = _row_nonzeros(encoded)
    # Rows in parallel (one thread on a core without threads) when there is enough work; in order,
    # a bitmap row's first value is where the previous row's ended, and no prologue counts them
    # (on Cortex-M4 a population count is a dozen instructions, unrolled over the mask).
    parallel = n_batch * rows * out_h * out_w >= MIN_PARALLEL_ELEMENTS
    rows_loop = T.parallel if parallel else T.serial
    # Argument shapes in int64, as Relax's legalized kernels have them: FuseTIR maps a Relax
    # value to one buffer type in every kernel of a fused group.
    x_shape, values_shape, index_shape = (T.int64(x_size),), (T.int64(n_values),), (T.int64(n_index),)
    out_shape = tuple(T.int64(d) for d in (n_batch, rows, out_h, out_w))

    @T.macro
    def append(offsets, weights, count, vo, k, weight):
        """One non-zero of row ``vo`` into the row's list: where it reads, and its value."""
        c = T.meta_var(k % in_group)
        kh = T.meta_var(k // in_group // kernel_w)
        kw = T.meta_var(k // in_group % kernel_w)
        group_base = T.meta_var(vo // out_group * g.group_step)
        offsets[count[0]] = group_base + c * g.channel_step + kh * g.kh_step + kw * g.kw_step
        weights[count[0]] = T.Cast(acc_dtype, weight)
        count[0] = count[0] + 1

    @T.macro
    def multiply(x, out, offsets, weights, count, acc, cursor, vo):
        """The row's output, a tile of pixels at a time, from its list of non-zeros."""
        offsets[count[0]] = -1  # the list's end mark
        for n, oh, t in T.grid(n_batch, out_h, tiles):
            for i in T.unroll(tile):
                acc[i] = T.Cast(acc_dtype, 0)
            base = T.meta_var(n * g.batch_step + oh * g.row_step + t * tile * g.col_step)
            cursor[0] = 0
            # Up to the end mark: a loop with no trip count LLVM could compute is not unrolled (the
            # counted form was, four times over, for a third more code on Cortex-M4).
            while offsets[cursor[0]] >= 0:
                j = T.meta_var(cursor[0])
                for i in T.unroll(tile):
                    acc[i] = acc[i] + weights[j] * T.Cast(acc_dtype, x[base + offsets[j] + i * g.col_step])
                cursor[0] = cursor[0] + 1
            for i in T.unroll(tile):
                if t * tile + i < out_w:  # the last tile may reach past the output width
                    out[n, vo, oh, t * tile + i] = acc[i]

    @T.macro
    def decode_bitmap(index, values, first, offsets, weights, count, pending, vo):
        """The set bits of the row's mask bytes, lowest first; a zero byte is skipped whole."""
        for j in range(row_bytes):
            pending[0] = T.Cast("int32", index[vo * row_bytes + j])
            while pending[0] != 0:
                low = T.meta_var(T.bitwise_and(pending[0], -pending[0]))  # the lowest set bit
                append(offsets, weights, count, vo, j * 8 + 31 - T.clz(low), values[first[vo] + count[0]])
                pending[0] = T.bitwise_xor(pending[0], low)
        # Rows in order: the next row starts where this one ends. (A Python test when the kernel
        # is generated, around a TIR one: not one `if`.)
        if not parallel:  # noqa: SIM102
            if vo + 1 < rows:
                first[vo + 1] = first[vo] + count[0]

    n_kept, group = spec.n, spec.m
    bits = index_bits(group) if spec.format == "nm" else 0
    per_byte = 8 // bits if bits else 0
    slots = spec.slots_per_row if spec.format == "nm" else 0

    @T.macro
    def decode_nm(index, values, offsets, weights, count, vo):
        """The row's N:M slots in order; an empty slot (value 0) is skipped."""
        for slot in range(slots):
            at = T.meta_var(vo * slots + slot)
            if values[at] != T.Cast(v_dtype, 0):
                shift = T.meta_var(at % per_byte * bits)
                position = T.meta_var(
                    T.bitwise_and(
                        T.shift_right(T.Cast("int32", index[at // per_byte]), shift), (1 << bits) - 1
                    )
                )
                append(offsets, weights, count, vo, slot // n_kept * group + position, values[at])

    bitmap = spec.format == "bitmap"
    block_name = f"{KERNEL_PREFIX}_{spec.format}"

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        x: T.Buffer(x_shape, x_dtype),
        values: T.Buffer(values_shape, v_dtype),
        index: T.Buffer(index_shape, "uint8"),
        out: T.Buffer(out_shape, acc_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "op_pattern": 4})
        with T.sblock("root"):
            first = T.sblock_alloc_buffer((rows,), "int32")  # bitmap: each row's first value
            if bitmap:
                with T.sblock(ROW_STARTS):
                    T.reads(index[0:n_index])
                    T.writes(first[0:rows])
                    first[0] = 0
                    if parallel:  # rows in any order: count the set bits of the rows before
                        for o in range(rows - 1):
                            first[o + 1] = first[o]
                            for j in range(row_bytes):
                                first[o + 1] = first[o + 1] + T.popcount(
                                    T.Cast("int32", index[o * row_bytes + j])
                                )
            for o in rows_loop(rows):
                with T.sblock(block_name):
                    vo = T.axis.spatial(rows, o)
                    T.reads(x[0:x_size], values[0:n_values], index[0:n_index], first[0:rows])
                    T.writes(out[0:n_batch, vo, 0:out_h, 0:out_w], first[0:rows])
                    offsets = T.alloc_buffer((most + 1,), "int32")
                    weights = T.alloc_buffer((most,), acc_dtype)
                    count = T.alloc_buffer((1,), "int32")
                    pending = T.alloc_buffer((1,), "int32")  # a mask byte's bits not yet walked
                    acc = T.alloc_buffer((tile,), acc_dtype)
                    cursor = T.alloc_buffer((1,), "int32")
                    count[0] = 0
                    if bitmap:
                        decode_bitmap(index, values, first, offsets, weights, count, pending, vo)
                    else:
                        decode_nm(index, values, offsets, weights, count, vo)
                    multiply(x, out, offsets, weights, count, acc, cursor, vo)

    return kernel


def _emit_kernel(bb: Any, x: Any, encoded: Encoded, geometry: Geometry, kernel_h: int, acc_dtype: str) -> Any:
    """The kernel's call on ``x`` flattened (and zero-extended so that the last tile's reads stay
    inside it)."""
    from tvm import relax

    size = 1
    for d in x.ty.shape:
        size *= int(d)
    flat = relax.op.reshape(x, [size])
    needed = geometry.input_size(kernel_h)
    if needed > size:
        flat = relax.op.nn.pad(flat, [0, needed - size])
        size = needed
    flat = bb.normalize(flat)
    kernel = conv_kernel(encoded, geometry, size, str(flat.ty.dtype), acc_dtype)
    gv = bb.add_func(kernel, f"{KERNEL_PREFIX}_{encoded.spec.format}")
    g = geometry
    out = relax.TensorType((g.batch, g.rows, g.out_height, g.out_width), acc_dtype)
    values = relax.const(encoded.values, str(encoded.values.dtype))
    index = relax.const(encoded.index, "uint8")
    return bb.emit(relax.call_tir(gv, [flat, values, index], out))


def emit_sparse_conv2d(
    bb: Any,
    x: Any,
    encoded: Encoded,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    groups: int,
    acc_dtype: str,
    pad_value: int | float = 0,
) -> Any:
    """The accumulator of a 2-D convolution (NCHW) of ``x`` by a sparse weight.

    Args:
        bb: The block builder.
        x: The NCHW input (normalized, static shape).
        encoded: The weight, ``conv`` layout, shape ``[O, I / groups, KH, KW]`` (or ``[O, I, KW]``).
        strides, dilations: Two each.
        pads: ``(top, left, bottom, right)``.
        groups: The convolution's groups.
        acc_dtype: ``int32`` for int8 data, ``float32`` for float.
        pad_value: What padding holds (the input zero point for int8).

    Returns:
        ``acc_dtype[N, O, OH, OW]``.
    """
    from tvm import relax

    top, left, bottom, right = (int(p) for p in pads)
    if top or left or bottom or right:
        widths = [0, 0, 0, 0, top, bottom, left, right]
        x = bb.normalize(relax.op.nn.pad(x, widths, pad_value=pad_value))
    batch, channels, height, width = (int(d) for d in x.ty.shape)
    shape = encoded.spec.shape
    kernel_h, kernel_w = (1, int(shape[-1])) if len(shape) == 3 else (int(shape[2]), int(shape[3]))
    stride_h, stride_w = (int(s) for s in strides)
    dil_h, dil_w = (int(d) for d in dilations)
    plane = height * width
    geometry = Geometry(
        batch=batch, rows=encoded.spec.rows,
        out_height=(height - dil_h * (kernel_h - 1) - 1) // stride_h + 1,
        out_width=(width - dil_w * (kernel_w - 1) - 1) // stride_w + 1,
        kernel_width=kernel_w, channels=channels // groups, groups=int(groups),
        batch_step=channels * plane, row_step=stride_h * width, col_step=stride_w,
        group_step=channels // groups * plane, channel_step=plane, kh_step=dil_h * width, kw_step=dil_w,
    )  # fmt: skip
    return _emit_kernel(bb, x, encoded, geometry, kernel_h, acc_dtype)


def emit_sparse_matmul(bb: Any, x: Any, encoded: Encoded, acc_dtype: str) -> Any:
    """``x[..., K] @ W`` for a sparse weight (``matmul`` or ``matmul-transposed`` layout): a 1x1
    convolution whose pixels are the rows of ``x`` (the output transposed back when there are
    several).

    Returns:
        ``acc_dtype[..., N]``.
    """
    from tvm import relax

    x = bb.normalize(x)
    shape = [int(d) for d in x.ty.shape]
    lead, length = shape[:-1], shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    n_out = encoded.spec.rows
    geometry = Geometry(
        batch=1, rows=n_out, out_height=1, out_width=rows, kernel_width=1, channels=length, groups=1,
        batch_step=0, row_step=0, col_step=length, group_step=0, channel_step=1, kh_step=0, kw_step=0,
    )  # fmt: skip
    acc = _emit_kernel(bb, x, encoded, geometry, 1, acc_dtype)
    flat = relax.op.reshape(acc, [n_out, rows])
    if rows != 1:
        flat = relax.op.permute_dims(flat, [1, 0])
    return bb.normalize(relax.op.reshape(flat, [*lead, n_out]))


def emit_sparse_reader(bb: Any, node: Any, inputs: list[Any]) -> Any:
    """A float ``Conv``, ``Gemm`` or ``MatMul`` whose weight (input 1) is an ``edgec.SparseWeight``:
    its sparse kernel plus the bias (Conv's ``B``, Gemm's ``C``).

    Args:
        bb: The block builder.
        node: The legal graph's node (``onnx_graphsurgeon``), its weight produced by a SparseWeight.
        inputs: The Relax values of its inputs (the weight's slot is unused).
    """
    from tvm import relax

    encoded = spec_of(sparse_producer(node.inputs[1]))
    x = bb.normalize(inputs[0])
    bias = inputs[2] if len(inputs) > 2 else None
    if node.op != "Conv":
        y = emit_sparse_matmul(bb, x, encoded, "float32")
        return y if bias is None else bb.normalize(relax.op.add(y, bias))
    one_dimensional = len(x.ty.shape) == 3
    attrs = node.attrs
    spatial = 1 if one_dimensional else 2
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if one_dimensional:  # [N, C, L] as [N, C, 1, L]
        x = bb.normalize(relax.op.expand_dims(x, [2]))
        strides, dilations, pads = [1, *strides], [1, *dilations], [0, pads[0], 0, pads[1]]
    y = emit_sparse_conv2d(bb, x, encoded, strides, pads, dilations, int(attrs.get("group", 1)), "float32")
    if bias is not None:
        y = relax.op.add(y, relax.op.reshape(bias, [1, -1, 1, 1]))
    return bb.normalize(relax.op.squeeze(y, [2]) if one_dimensional else y)
