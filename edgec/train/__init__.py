"""Training on TVM Relax (``relax.training``): distillation and quantization-aware fine-tuning.

Modules: ``graph`` (an inference graph in the form training imports), ``gradients`` (gradients TVM
lacks, NHWC conv2d), ``fake_quant`` (fake quantization with a straight-through estimator and
learned scales), ``losses``, ``optimizer`` (AdamW with a scheduled rate), ``compiler`` (the
compiled training step), ``engine`` (the loop), ``export`` (weights back into ONNX, BatchNorm
statistics), ``distill`` and ``qat``. TVM is imported lazily, inside the functions that need it.
"""
