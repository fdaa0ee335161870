"""Compilation targets: x86, Cortex-A and Cortex-M; TVM lowering lives in ``edgec.targets.tvm``."""

from edgec.targets.base import Artifact, Target, Toolchain
from edgec.targets.registry import all_targets, get_target, register_target

__all__ = ["Artifact", "Target", "Toolchain", "all_targets", "get_target", "register_target"]
