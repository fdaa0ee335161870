"""The pass manager: the ``Pass`` contract, the registry, pipeline strings and the runner."""

from edgec.pm.base import Pass, PassContext, PassResult
from edgec.pm.manager import PassManager, PassRecord, PipelineRun
from edgec.pm.pipeline import FixedPoint, format_pipeline, make_pass, parse_pipeline
from edgec.pm.registry import (
    ENTRY_POINT_GROUP,
    all_passes,
    all_pipelines,
    get_pass,
    plugin_source,
    register,
    register_pipeline,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "FixedPoint",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "PassResult",
    "PipelineRun",
    "all_passes",
    "all_pipelines",
    "format_pipeline",
    "get_pass",
    "make_pass",
    "parse_pipeline",
    "plugin_source",
    "register",
    "register_pipeline",
]
