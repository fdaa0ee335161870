"""``patch-stages{until=T,bands=N}``: the stage of the legal graph ending at tensor ``T`` runs in
``N`` row bands, one after the other (:mod:`.patching` has the plan and its arithmetic).

Each band is a copy of the stage: a ``Slice`` of the graph input's rows, then every prefix node
again (named ``<node>__band<j>``, recording the node it copies in ``patch_of``, reading the same
constants) with its padding at the image borders only; a ``Concat`` along the rows writes ``T``.
Copies compute what the original computes on their rows (convolutions, pools and elementwise ops
are row-local), so the graph is bit-exact with the unpatched one; with verification on the pass
measures it (``max_abs_difference``, 0 expected). The copies are executed band after band
(:func:`edgec.ir.execution_order`), and the runtime-free planner lets each band's last kernel
write straight into its rows of ``T``. A stage that cannot run in bands (a node that is not
row-local, a tensor also read after the stage ...) is left alone, with the reason in the stats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from edgec.ir import EdgeGraph, static_shape
from edgec.pm import Pass, PassContext, PassResult, register
from edgec.targets.integer.kind import DOMAIN
from edgec.targets.legalize.patching import BandPlan, NotPatchable, plan_bands

__all__ = ["PATCH_OF", "PatchStages", "apply_bands"]

# Attribute of a band's copy of an edgec node: the name of the node it copies (reports read it
# through edgec.targets.integer.kind.original_name).
PATCH_OF = "patch_of"


def _rows(graph: EdgeGraph, like: gs.Tensor, name: str, rows: int) -> gs.Variable:
    shape = list(static_shape(like) or ())
    shape[2] = rows
    return gs.Variable(graph.fresh_name(name), dtype=like.dtype, shape=shape)


def apply_bands(graph: EdgeGraph, plan: BandPlan) -> list[gs.Node]:
    """Rewrites ``graph`` with the bands of ``plan``; returns the new nodes."""
    until = graph.tensors()[plan.until]
    made: list[gs.Node] = []
    outputs: list[gs.Tensor] = []
    for band, (rows, pads) in enumerate(zip(plan.bands, plan.pads, strict=True)):
        copies: dict[str, gs.Tensor] = {}
        for source in plan.inputs:
            lo, hi = rows[source.name]
            band_input = _rows(graph, source, f"{source.name}_band{band}", hi - lo)
            bounds = [graph.add_constant(f"{source.name}_band{band}_{key}", np.array([v], np.int64))
                      for key, v in (("start", lo), ("end", hi), ("axis", 2))]  # fmt: skip
            made.append(gs.Node("Slice", name=graph.fresh_name(f"{source.name}__band{band}"),
                                inputs=[source, *bounds], outputs=[band_input]))  # fmt: skip
            copies[source.name] = band_input
        for node in plan.nodes:
            out = node.outputs[0]
            lo, hi = rows[out.name]
            band_out = _rows(graph, out, f"{out.name}_band{band}", hi - lo)
            attrs = dict(node.attrs)
            if node.name in pads:
                top, bottom = pads[node.name]
                padding = [int(p) for p in attrs["pads"]]
                attrs["pads"] = [top, padding[1], bottom, padding[3]]
            if node.domain == DOMAIN:
                attrs[PATCH_OF] = str(node.attrs.get(PATCH_OF, node.name))
            inputs = [copies.get(t.name, t) if not isinstance(t, gs.Constant) else t for t in node.inputs]
            name = f"{node.name}__band{band}"
            made.append(gs.Node(node.op, name, attrs, inputs, [band_out], domain=node.domain))
            copies[out.name] = band_out
        outputs.append(copies[plan.until])
    until.inputs.clear()
    made.append(gs.Node("Concat", name=graph.fresh_name(f"{plan.until}__bands"), attrs={"axis": 2},
                        inputs=outputs, outputs=[until]))  # fmt: skip
    graph.gs.nodes.extend(made)
    graph.cleanup()
    return made


@register
@dataclass(frozen=True)
class PatchStages(Pass):
    """Runs the stage of the graph that ends at a tensor in row bands, recomputing the rows they share."""

    name: ClassVar[str] = "patch-stages"
    # The bands are copies of edgec nodes (onnxruntime cannot run them); with verification on the
    # pass measures its own error against the numpy reference of the unpatched graph (0 expected).
    lossless: ClassVar[bool] = False
    until: str = ""
    bands: int = 2

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        if not self.until:
            return PassResult(graph, changed=False, stats={"refused": "no stage given (until=<tensor>)"})
        ctx.analyses.get("shapes", graph)
        try:
            plan = plan_bands(graph, self.until, self.bands)
        except NotPatchable as why:
            return PassResult(graph, changed=False, stats={"refused": str(why)})
        before = graph.copy() if ctx.verify else None
        apply_bands(graph, plan)
        stats: dict[str, Any] = {
            "until": self.until,
            "bands": self.bands,
            "rows": [list(band[self.until]) for band in plan.bands],
            "nodes": len(plan.nodes),
            "macs": plan.macs,
            "extra_macs": plan.extra_macs,
        }
        if before is not None:
            from edgec.targets.integer.reference import reference_difference

            stats["max_abs_difference"] = reference_difference(before, graph, ctx.seed)
        return PassResult(graph, changed=True, stats=stats)
