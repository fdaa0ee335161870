"""The pass manager: the ``Pass`` contract, the registry, pipeline strings and the runner."""

from edgec.pm.analysis import AnalysisManager, all_analyses, register_analysis
from edgec.pm.base import Pass, PassContext, PassResult
from edgec.pm.instruments import PassInstrument, check_lossless, default_instruments
from edgec.pm.manager import PassContractError, PassManager, PassRecord, PipelineRun
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
    "AnalysisManager",
    "FixedPoint",
    "Pass",
    "PassContext",
    "PassContractError",
    "PassInstrument",
    "PassManager",
    "PassRecord",
    "PassResult",
    "PipelineRun",
    "all_analyses",
    "all_passes",
    "all_pipelines",
    "check_lossless",
    "default_instruments",
    "format_pipeline",
    "get_pass",
    "make_pass",
    "parse_pipeline",
    "plugin_source",
    "register",
    "register_analysis",
    "register_pipeline",
]
