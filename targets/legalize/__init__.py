"""The TVM targets' own legalization passes, registered through the ``edgec.passes`` entry point.

``group-qdq`` turns QDQ groups into edgec integer nodes, ``pad-channels`` fits first convolutions
to the int8 micro-kernels, ``pack-weights`` keeps narrow weights at
their width and ``sparse-weights`` stores weights with zeros compressed where that is smaller; with
cleanup's ``eliminate-identity`` and ``split-sum`` they make the legalization pipeline the TVM
targets declare (``Target.capabilities().legalization``), which the pass manager runs and records
like any other pipeline, so ``--dump-after``, ``edgec check`` and the manifest
see every rewrite that happens before ``Target.lower``.
"""

from edgec.targets.legalize.fuse_conv_pool import FuseConvPool
from edgec.targets.legalize.group_qdq import GroupQdq
from edgec.targets.legalize.pack_weights import PackWeights
from edgec.targets.legalize.pad_channels import PadChannels
from edgec.targets.legalize.patch_stages import PatchStages
from edgec.targets.legalize.plan_memory import PlanMemory
from edgec.targets.legalize.sparse_weights import SparseWeights

__all__ = [
    "FuseConvPool",
    "GroupQdq",
    "PackWeights",
    "PadChannels",
    "PatchStages",
    "PlanMemory",
    "SparseWeights",
]
