"""Operator fusion: fold normalisation, scales, shifts and padding into Conv and Gemm.

``batchnorm`` folds inference BatchNormalization into the Conv/Gemm/MatMul before it,
``matmul_add`` turns MatMul + bias Add into Gemm, ``conv_affine`` folds Pad, per-channel Mul and Add
into Conv; ``default`` runs them with cleanup to a fixed point.
"""

from __future__ import annotations

from edgec.pm import register_pipeline

register_pipeline(
    "default",
    "eliminate-dead-code,fold-constants,eliminate-identity,merge-transposes,merge-reshapes,"
    "fuse-pad-conv,fuse-conv-bn,fuse-conv-mul-add,fuse-gemm-bn,fuse-matmul-add,eliminate-dead-code",
    fixed_point=True,
    description="cleanup and fusion to a fixed point",
)
