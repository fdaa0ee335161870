"""Sparse kernels in Relax: conv2d and matmul that read an ``edgec.SparseWeight`` compressed.

The ``sparse-weights`` legalization gives a conv/matmul a weight in a sparse format
(:mod:`.sparse_layout`); its emission (``IntegerConv``/``IntegerMatMul`` in
:mod:`edgec.targets.integer`, a float ``Conv``/``Gemm``/``MatMul`` in :mod:`.translate`) calls
:func:`emit_sparse_conv2d` / :func:`emit_sparse_matmul` here instead of the dense op. The weight
stays in the artifact as its compressed arrays; the kernel decodes it where it multiplies:

* one output channel (row) at a time, parallel over rows; the row's non-zeros are walked in
  order, and each one is multiplied into the whole output plane of its row
  (``out[o, :, :] += w · x_padded[c, kh:, kw:]`` with the strides and dilations), so the
  decode costs one step per non-zero, not per multiply-accumulate, and the inner loop is a
  plain multiply-add over output pixels;
* ``bitmap``: the walk reads one mask byte per 8 weights and skips a zero byte whole (a block
  of 8 zeros), then each set bit; the first value of each row is found by a prologue that
  counts the set bits of the rows before it (so nothing but the mask and the values is stored);
* ``nm``: every group of ``m`` weights has ``n`` value slots and packed positions: fixed steps,
  an empty slot (value 0) is skipped.

A multiply-accumulate is done only for a non-zero weight: at sparsity ``s`` the kernel does
``1 - s`` of the dense kernel's arithmetic, with scalar code (no SIMD across output channels).
Integer accumulation is exact, so int8 results are bit-exact with the dense kernel; float sums
are reordered (within float32 rounding).

Layout: NCHW (the input is padded first, with the zero point for int8, which is what real zero
quantizes to), accumulator out. A matmul ``x[M, K] @ W`` runs as a 1x1 convolution over
``x^T`` seen as ``[1, K, M, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
# Ops whose emission reads a SparseWeight at input 1 (float ones through emit_sparse_reader).
SPARSE_READERS = ("IntegerConv", "IntegerMatMul", "Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Geometry:
    """A convolution's shapes: input ``[batch, channels, height, width]`` (already padded), output
    ``[batch, rows, out_height, out_width]``, kernel ``kernel_height x kernel_width``."""

    batch: int
    channels: int
    height: int
    width: int
    rows: int
    out_height: int
    out_width: int
    kernel_height: int
    kernel_width: int
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1


def conv_kernel(encoded: Encoded, geometry: Geometry, x_dtype: str, acc_dtype: str) -> Any:
    """The TIR kernel ``(x, values, index) -> out`` for one sparse weight (see the module
    docstring); ``out`` is the ``acc_dtype`` accumulator, NCHW."""
    from tvm.script import tirx as T

    spec, g = encoded.spec, geometry
    n_batch, channels, height, width = g.batch, g.channels, g.height, g.width
    rows, out_h, out_w = g.rows, g.out_height, g.out_width
    kernel_w = g.kernel_width
    stride_h, stride_w = g.strides
    dil_h, dil_w = g.dilations
    in_group = channels // g.groups  # input channels per group
    out_group = rows // g.groups  # output channels per group
    n_values, n_index = int(encoded.values.size), int(encoded.index.size)
    v_dtype = str(encoded.values.dtype)
    row_bytes = spec.mask_bytes_per_row
    # Rows in parallel (one thread on a core without threads) when there is enough work.
    rows_loop = T.parallel if n_batch * rows * out_h * out_w >= MIN_PARALLEL_ELEMENTS else T.serial

    # Argument shapes in int64, as Relax's legalized kernels have them: FuseTIR maps a Relax
    # value to one buffer type in every kernel of a fused group.
    x_shape = tuple(T.int64(d) for d in (n_batch, channels, height, width))
    out_shape = tuple(T.int64(d) for d in (n_batch, rows, out_h, out_w))
    values_shape, index_shape = (T.int64(n_values),), (T.int64(n_index),)

    @T.macro
    def accumulate(x, out, vo, k, weight):
        c = T.meta_var(vo // out_group * in_group + k % in_group)
        kh = T.meta_var(k // in_group // kernel_w)
        kw = T.meta_var(k // in_group % kernel_w)
        for n, oh, ow in T.grid(n_batch, out_h, out_w):
            out[n, vo, oh, ow] = out[n, vo, oh, ow] + T.Cast(acc_dtype, weight) * T.Cast(
                acc_dtype, x[n, c, oh * stride_h + kh * dil_h, ow * stride_w + kw * dil_w]
            )

    @T.macro
    def clear(out, vo):
        for n, oh, ow in T.grid(n_batch, out_h, out_w):
            out[n, vo, oh, ow] = T.Cast(acc_dtype, 0)

    if spec.format == "bitmap":

        @T.prim_func(private=True, s_tir=True)
        def bitmap(
            x: T.Buffer(x_shape, x_dtype),
            values: T.Buffer(values_shape, v_dtype),
            index: T.Buffer(index_shape, "uint8"),
            out: T.Buffer(out_shape, acc_dtype),
        ):
            T.func_attr({"tirx.noalias": True, "op_pattern": 4})
            with T.sblock("root"):
                first = T.sblock_alloc_buffer((rows + 1,), "int32")
                with T.sblock(ROW_STARTS):
                    T.reads(index[0:n_index])
                    T.writes(first[0 : rows + 1])
                    first[0] = 0
                    for o in range(rows):
                        first[o + 1] = first[o]
                        for j in range(row_bytes):
                            first[o + 1] = first[o + 1] + T.popcount(
                                T.Cast("int32", index[o * row_bytes + j])
                            )
                for o in rows_loop(rows):
                    with T.sblock("edgec_sparse_bitmap"):
                        vo = T.axis.spatial(rows, o)
                        T.reads(
                            x[0:n_batch, 0:channels, 0:height, 0:width],
                            values[0:n_values],
                            index[vo * row_bytes : vo * row_bytes + row_bytes],
                            first[vo],
                        )
                        T.writes(out[0:n_batch, vo, 0:out_h, 0:out_w], first[vo])
                        clear(out, vo)
                        pending = T.alloc_buffer((1,), "int32")  # the byte's bits not yet walked
                        for j in range(row_bytes):
                            pending[0] = T.Cast("int32", index[vo * row_bytes + j])
                            while pending[0] != 0:  # a byte of 8 zeros is skipped whole
                                low = T.meta_var(T.bitwise_and(pending[0], -pending[0]))  # lowest set bit
                                # The row's start is its cursor from here on.
                                accumulate(x, out, vo, j * 8 + 31 - T.clz(low), values[first[vo]])
                                first[vo] = first[vo] + 1
                                pending[0] = T.bitwise_xor(pending[0], low)

        return bitmap

    n_kept, group = spec.n, spec.m
    bits = index_bits(group)
    per_byte = 8 // bits
    slots = spec.slots_per_row

    @T.prim_func(private=True, s_tir=True)
    def nm(
        x: T.Buffer(x_shape, x_dtype),
        values: T.Buffer(values_shape, v_dtype),
        index: T.Buffer(index_shape, "uint8"),
        out: T.Buffer(out_shape, acc_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "op_pattern": 4})
        with T.sblock("root"):
            for o in rows_loop(rows):
                with T.sblock("edgec_sparse_nm"):
                    vo = T.axis.spatial(rows, o)
                    T.reads(
                        x[0:n_batch, 0:channels, 0:height, 0:width],
                        values[vo * slots : vo * slots + slots],
                        index[0:n_index],
                    )
                    T.writes(out[0:n_batch, vo, 0:out_h, 0:out_w])
                    clear(out, vo)
                    for slot in range(slots):
                        at = T.meta_var(vo * slots + slot)
                        if values[at] != T.Cast(v_dtype, 0):  # an empty slot
                            position = T.meta_var(
                                T.bitwise_and(
                                    T.shift_right(
                                        T.Cast("int32", index[at // per_byte]), at % per_byte * bits
                                    ),
                                    (1 << bits) - 1,
                                )
                            )
                            accumulate(x, out, vo, slot // n_kept * group + position, values[at])

    return nm


def _emit_kernel(bb: Any, x: Any, encoded: Encoded, geometry: Geometry, acc_dtype: str) -> Any:
    from tvm import relax

    kernel = conv_kernel(encoded, geometry, str(x.ty.dtype), acc_dtype)
    name = f"{KERNEL_PREFIX}_{encoded.spec.format}"
    gv = bb.add_func(kernel, name)
    g = geometry
    out = relax.TensorType((g.batch, g.rows, g.out_height, g.out_width), acc_dtype)
    values = relax.const(encoded.values, str(encoded.values.dtype))
    index = relax.const(encoded.index, "uint8")
    return bb.emit(relax.call_tir(gv, [x, values, index], out))


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
        encoded: The weight, ``conv`` layout, shape ``[O, I / groups, KH, KW]``.
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
    geometry = Geometry(
        batch, channels, height, width, encoded.spec.rows,
        (height - dil_h * (kernel_h - 1) - 1) // stride_h + 1,
        (width - dil_w * (kernel_w - 1) - 1) // stride_w + 1,
        kernel_h, kernel_w, (stride_h, stride_w), (dil_h, dil_w), int(groups),
    )  # fmt: skip
    return _emit_kernel(bb, x, encoded, geometry, acc_dtype)


def emit_sparse_matmul(bb: Any, x: Any, encoded: Encoded, acc_dtype: str) -> Any:
    """``x[..., K] @ W`` for a sparse weight (``matmul`` or ``matmul-transposed`` layout), as a
    1x1 convolution of ``x^T`` (a reshape when ``x`` has one row).

    Returns:
        ``acc_dtype[..., N]``.
    """
    from tvm import relax

    x = bb.normalize(x)
    shape = [int(d) for d in x.ty.shape]
    lead, length = shape[:-1], shape[-1]
    rows = 1
    for d in lead:
        rows *= d
    columns = x if rows == 1 else relax.op.permute_dims(relax.op.reshape(x, [rows, length]), [1, 0])
    image = bb.normalize(relax.op.reshape(columns, [1, length, rows, 1]))
    n_out = encoded.spec.rows
    geometry = Geometry(1, length, rows, 1, n_out, rows, 1, 1, 1)
    acc = _emit_kernel(bb, image, encoded, geometry, acc_dtype)
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
