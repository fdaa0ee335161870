"""The pass contract: ``Pass``, ``PassResult`` and ``PassContext``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgec.errors import UnsupportedNodeError
from edgec.ir import EdgeGraph
from edgec.pm.analysis import AnalysisManager

if TYPE_CHECKING:
    from edgec.capabilities import Capabilities
    from edgec.data import Dataset


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the graph (the same object or a new one), whether it changed, and
    statistics for the manifest (plain JSON values: numbers, strings, lists, dicts)."""

    graph: EdgeGraph
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """Configuration and data shared by the passes of one pipeline run.

    Attributes:
        target: name of the compilation target, if known (passes may adapt to it).
        capabilities: what the target runs natively (integer kernels, fp16 arithmetic, packed
            weight widths ...); ``None`` when no target constrains the passes.
        verify: check every lossless pass numerically against onnxruntime.
        seed: seed of every random choice (verification inputs, sampling).
        calibration: data for calibrating passes: a :class:`edgec.data.Dataset` (how edgec loads
            ``--calib``), or named arrays with a leading sample axis.
        evaluation: labelled data for passes that measure accuracy: a ``Dataset``, or named
            arrays with a ``label`` key.
        dump_after: pass names after which the graph's text form is written to ``dump_dir``.
        dump_dir: where dumps go (stderr when ``None``).
        warn: callback for warnings (the CLI prints them on stderr).
        progress: ``progress(description, total)`` starts a progress bar and returns the
            function that advances it by a number of items, ``advance(done, status="")``
            (silent by default).
        training: named arrays with a leading sample axis (``label`` optional) for passes that
            train (distillation, quantization-aware training).
        reference: the model as loaded, before any pass: the teacher of a distillation that
            recovers what compression lost.
        options: free-form settings for plugin passes.
        refusals: when a list (``edgec check``), passes record the nodes they refuse here and
            leave them alone instead of raising, so that one run reports every refusal.
        analyses: the cache of graph analyses (shapes, costs ...), invalidated by the pass
            manager from what each pass declares it preserves.
    """

    target: str | None = None
    capabilities: Capabilities | None = None
    verify: bool = False
    seed: int = 0
    calibration: Dataset | dict[str, np.ndarray] | None = None
    evaluation: Dataset | dict[str, np.ndarray] | None = None
    training: dict[str, np.ndarray] | None = None
    reference: EdgeGraph | None = None
    dump_after: frozenset[str] = frozenset()
    dump_dir: Path | None = None
    warn: Callable[[str], None] = lambda message: None
    progress: Callable[[str, int], Callable[..., None]] = lambda description, total: (
        lambda done, status="": None
    )
    options: dict[str, Any] = field(default_factory=dict)
    refusals: list[UnsupportedNodeError] | None = None
    analyses: AnalysisManager = field(default_factory=AnalysisManager)
    # The manager running the current pipeline; passes that run other passes go through it.
    runner: Callable[[Pass, EdgeGraph], PassResult] | None = field(default=None, repr=False)

    def refuse(self, error: UnsupportedNodeError) -> None:
        """Raises ``error``, or records it when collecting refusals (the pass then skips the node)."""
        if self.refusals is None:
            raise error
        self.refusals.append(error)

    def run_pass(self, instance: Pass, graph: EdgeGraph) -> PassResult:
        """Runs another pass from inside a pass, through the pass manager, so that it is recorded
        (as a nested pass), verified and instrumented like any other."""
        if self.runner is not None:
            return self.runner(instance, graph)
        from edgec.pm.manager import PassManager

        run = PassManager([instance], self).run(graph)
        record = run.records[-1]
        return PassResult(run.graph, record.changed, record.stats)


@dataclass(frozen=True)
class Pass:
    """Base of every pass: a frozen dataclass whose fields are its options.

    Subclasses set ``name`` (kebab-case, unique), ``lossless``, a one-sentence docstring, and
    implement ``run``. Register them with ``@register``.

    Class attributes the pass manager enforces or uses:
        in_place: ``True`` (the default) when the pass changes the graph it is given and returns
            that same object; ``False`` when it returns a new graph and leaves its input untouched
            (the manager checks both).
        preserves: names of the analyses (``shapes``, ``cost`` ...) that stay valid when the pass
            changes the graph; every other cached analysis of the graph is dropped.
    """

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    in_place: ClassVar[bool] = True
    preserves: ClassVar[frozenset[str]] = frozenset()

    def run(self, graph: EdgeGraph, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass {type(self).__name__} does not implement run()")

    @classmethod
    def summary(cls) -> str:
        """The first sentence of the docstring."""
        return (cls.__doc__ or "").strip().split("\n")[0]

    def options(self) -> dict[str, Any]:
        """The option values of this instance, by option name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def spec(self) -> str:
        """The pipeline-string form of this instance (only options that differ from defaults)."""
        changed = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if value != default:
                changed.append(f"{f.name}={_format_value(value)}")
        return f"{self.name}{{{','.join(changed)}}}" if changed else self.name


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ":".join(_format_value(v) for v in value)
    return str(value)
