"""Model compression: quantization, pruning, low-rank adapters, distillation
and Deep Compression, applied to params or to whole workdirs."""
