"""Integer kernels of the TVM targets: one class per op kind (:mod:`.kind`), the fixed-point
arithmetic they share (:mod:`.fixed_point`), their table (:mod:`.kernels`) and the numpy executor of
a legal graph (:mod:`.reference`).

Nothing here imports tvm at import time: the passes and ``edgec check`` read the kinds' capability
checks and plans, and only the Relax emission (inside each kind's ``emit``) needs tvm.
"""
