"""Quantization: calibrated int8 QDQ, dynamic and weight-only schemes, fp16, and accuracy tools.

Modules: ``numerics`` (the arithmetic of scales and zero points), ``calibration`` (activation ranges
from data), ``qdq`` (inserting QuantizeLinear/DequantizeLinear into a graph), ``weight_only``
(weight-int8/4/2, fp16, int8-dynamic), ``quantize`` (the ``quantize`` pass), ``equalization``
(``cross-layer-equalization``), ``bias_correction`` (``bias-correction``) and ``sensitivity``
(``quantization-sensitivity`` and the mixed-precision search behind ``quantize{budget=...}``).
"""
