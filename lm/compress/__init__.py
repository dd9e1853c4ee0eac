"""Model compression: quantization, pruning, low-rank adapters, distillation."""
