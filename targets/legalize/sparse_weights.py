"""``sparse-weights``: a conv/matmul weight with zeros is stored compressed where that is smaller.

One rule per reader that has a sparse kernel (``IntegerConv``, ``IntegerMatMul``, and float
``Conv``, ``Gemm``, ``MatMul``): the rule's check measures every format the target decodes
(``Capabilities.sparse_formats``, :mod:`edgec.targets.tvm.sparse_layout`) and keeps the smallest,
an N:M pattern on a tie (its kernel walks fixed steps, no branch per weight); the replacement is an
``edgec.SparseWeight`` node holding the compressed arrays, whose output the reader reads in place
of the constant. The lowering gives that reader a kernel that walks the non-zeros and skips the
rest (:mod:`edgec.targets.tvm.sparse_kernels`), so the dense weight is never stored or rebuilt.

A weight that stays dense says why in the pass statistics (``weights``: one row per weight, with
its format, sparsity, and bytes dense and stored): not smaller, the target decodes no format that
fits, its reader has no sparse kernel, it is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.errors import EdgecError
from edgec.ir import EdgeGraph, static_shape
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.rewrite import Const, Match, Op, Optional, Rule, RuleSet, Var
from edgec.targets.tvm.packed_layout import PACKED_DOMAIN, PACKED_OP, dequantize, packed_bytes
from edgec.targets.tvm.packed_layout import spec_of as packed_spec
from edgec.targets.tvm.sparse_layout import (
    FORMATS,
    Encoded,
    SparseWeight,
    encode,
    nm_pattern,
    rows_of,
    sparse_node,
)

__all__ = ["SparseWeights", "sparse_rules"]

_AUTO_PAD_OK = ("NOTSET", "VALID", b"NOTSET", b"VALID")
_VALUE_DTYPES = ("int8", "float32")


def _layout(node: gs.Node, weight: gs.Constant) -> tuple[str | None, str]:
    """How the reader reads its weight (a ``sparse_layout`` layout), or ``None`` and why its
    kernel cannot read it sparse."""
    rank = len(weight.shape)
    if node.op in ("IntegerConv", "Conv"):
        if rank not in (3, 4):
            return None, f"a {rank - 2}-D convolution has no sparse kernel (1-D and 2-D only)"
        if node.attrs.get("auto_pad", "NOTSET") not in _AUTO_PAD_OK:
            return None, f"auto_pad={node.attrs['auto_pad']!r} has no sparse kernel (give explicit pads)"
        return "conv", ""
    if rank != 2:
        return None, f"its {rank}-D weight is not a matrix"
    if node.op == "Gemm":
        attrs = node.attrs
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            return None, "a Gemm with alpha/beta != 1 or transA has no sparse kernel"
        return ("matmul-transposed" if attrs.get("transB", 0) else "matmul"), ""
    if node.op == "MatMul":
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) < 2:
            return None, "its input's rank is unknown or below 2 (run shape inference first)"
    return "matmul", ""


def _candidates(weight: np.ndarray, spec: SparseWeight, formats: frozenset[str]) -> list[Encoded]:
    candidates = []
    if "bitmap" in formats:
        candidates.append(encode(weight, spec))
    pattern = nm_pattern(rows_of(weight, spec.layout)) if "nm" in formats else None
    if pattern is not None:
        n, m = pattern
        nm = SparseWeight(spec.name, "nm", spec.layout, spec.shape, spec.dtype, n, m)
        candidates.append(encode(weight, nm))
    # Smallest first; on a tie N:M (fixed steps, no branch per weight).
    return sorted(candidates, key=lambda e: (e.stored_bytes, e.spec.format != "nm"))


@dataclass
class _Plan:
    """One weight's decision: the chosen encoding (``None``: dense) and its statistics row."""

    encoded: Encoded | None
    row: dict[str, Any]


def sparse_rules(formats: frozenset[str], target: str, min_saving: float) -> tuple[RuleSet, dict[str, dict]]:
    """The rules, and the per-weight rows their checks fill (reader node name → row)."""
    plans: dict[int, _Plan] = {}
    rows: dict[str, dict] = {}

    def check(match: Match, graph: EdgeGraph) -> str | None:
        node, weight = match["f"], match["w"]
        values = np.asarray(weight.values)
        dense = int(values.nbytes)
        row: dict[str, Any] = {"weight": weight.name, "node": node.name, "op": node.op}
        row.update(sparsity=round(float(np.mean(values == 0)) if values.size else 0.0, 4), dense_bytes=dense)
        rows[node.name] = row
        layout, why = _layout(node, weight)
        encoded = None
        if layout is None:
            pass
        elif values.dtype.name not in _VALUE_DTYPES:
            why = f"its weight is {values.dtype.name}; sparse kernels read int8 or float32 weights"
        elif len(weight.outputs) > 1:
            why = f"'{weight.name}' is shared by {len(weight.outputs)} readers"
        elif not np.any(values == 0):
            why = "it has no zeros"
        elif not formats:
            why = f"target '{target}' declares no sparse format (or --no-sparse-weights switched them off)"
        else:
            spec = SparseWeight(f"{weight.name}_sparse", "bitmap", layout, values.shape, values.dtype.name)
            candidates = _candidates(values, spec, formats)
            best = candidates[0] if candidates else None
            if best is None:
                why = f"no format target '{target}' decodes ({', '.join(sorted(formats))}) fits its zeros"
            elif best.stored_bytes > dense * (1 - min_saving) or best.stored_bytes >= dense:
                wanted = f"{min_saving:.0%} less than " if min_saving else "smaller than "
                why = f"not {wanted}dense: {best.label} takes {best.stored_bytes} B of {dense} B"
            else:
                encoded = best
        row.update(format=encoded.label if encoded else "dense")
        row.update(stored_bytes=encoded.stored_bytes if encoded else dense)
        if encoded is None:
            row["reason"] = why
            return why
        plans[id(node)] = _Plan(encoded, row)
        return None

    def rule(name: str, op: str, *rest: Const | Optional) -> Rule:
        pattern = Op(op, Var("x"), Const("w"), *rest, name="f")
        names = ["x", "w"] + [(p.pattern if isinstance(p, Optional) else p).name for p in rest]

        def replace(match: Match, graph: EdgeGraph) -> list[gs.Node]:
            node, weight = match["f"], match["w"]
            plan = plans.pop(id(node))
            assert plan.encoded is not None
            shape = list(weight.shape)
            decoded = gs.Variable(graph.fresh_name(f"{weight.name}__sparse"), dtype=weight.dtype, shape=shape)
            sparse = sparse_node(plan.encoded, decoded, plan.row["dense_bytes"], graph)
            # The matched node is detached: its inputs are the pattern's bindings.
            inputs = [decoded if key == "w" else match[key] for key in names]
            while inputs[-1] is None:
                inputs.pop()
            reader = gs.Node(op, name=node.name, domain=node.domain, attrs=dict(node.attrs), inputs=inputs)
            reader.outputs = match.outputs
            return [sparse, reader]

        return Rule(name, pattern, replace, check)

    integer_constants = (Const("bias"), Const("multiplier"), Const("shift"))
    rules = [
        rule("integer-conv", "IntegerConv", *integer_constants),
        rule("integer-matmul", "IntegerMatMul", *integer_constants),
        rule("conv", "Conv", Optional(Var("b"))),
        rule("gemm", "Gemm", Optional(Var("c"))),
        rule("matmul", "MatMul"),
    ]
    return RuleSet(rules), rows


def _packed_rows(graph: EdgeGraph) -> list[dict[str, Any]]:
    """Rows for the weights ``pack-weights`` stored at their width that hold zeros: they stay
    packed (a sparse format of packed weights is not implemented)."""
    rows = []
    for node in graph.nodes:
        if node.domain != PACKED_DOMAIN or node.op != PACKED_OP:
            continue
        spec, stored = packed_spec(node), packed_bytes(node)
        zeros = float(np.mean(dequantize(spec, stored) == 0)) if spec.count else 0.0
        if not zeros:
            continue
        readers = sorted(reader.name for reader in node.outputs[0].outputs)
        reason = f"pack-weights stores it at {spec.bits} bits (no sparse format of packed weights yet)"
        rows.append(
            {
                "weight": node.inputs[0].name,
                "node": ",".join(readers) or node.name,
                "op": node.op,
                "sparsity": round(zeros, 4),
                "dense_bytes": int(stored.nbytes),
                "format": "dense",
                "stored_bytes": int(stored.nbytes),
                "reason": reason,
            }
        )
    return rows


@register
@dataclass(frozen=True)
class SparseWeights(Pass):
    """Stores conv/matmul weights with zeros in the target's smallest sparse format where that is smaller."""

    name: ClassVar[str] = "sparse-weights"
    # SparseWeight is edgec's own op (onnxruntime cannot run it); the encoding is exact
    # (tests/targets/test_sparse_weights.py decodes it back and runs the integer reference).
    lossless: ClassVar[bool] = False
    min_saving: float = 0.0
    formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.min_saving < 1:
            raise EdgecError(
                f"sparse-weights min_saving {self.min_saving} must be in [0, 1): 0.3 = 30% smaller"
            )
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise EdgecError(f"unknown sparse format(s) {unknown}; known: {', '.join(FORMATS)}")

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        capabilities = ctx.capabilities
        declared = capabilities.sparse_formats if capabilities is not None else frozenset()
        formats = declared & frozenset(self.formats) if self.formats else declared
        target = capabilities.target if capabilities is not None else (ctx.target or "none")
        rules, rows = sparse_rules(formats, target, self.min_saving)
        report = rules.apply(graph)
        weights = sorted([*rows.values(), *_packed_rows(graph)], key=lambda row: row["node"])
        stats: dict[str, Any] = {
            "sparse": report.total,
            "formats": sorted(formats),
            "dense_bytes": sum(row["dense_bytes"] for row in weights),
            "stored_bytes": sum(row["stored_bytes"] for row in weights),
            "weights": weights,
        }
        return PassResult(graph, changed=report.total > 0, stats=stats)
