"""Training on TVM Relax (``relax.training``): distillation and quantization-aware fine-tuning."""
