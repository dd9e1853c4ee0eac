"""LoRA adapters: merging them into their kernels.

The adapters themselves are lm/model/layers.py `Dense` options
(model.lora_rank, lora_alpha, lora_targets): y = x W + (alpha / r) x A B.
Training a LoRA model updates A and B alone (lm/train/optim.py freezes the
rest, with NOT_ADAPTERS). `merge` folds
each adapter into its kernel, W + (alpha / r) A B, giving a plain model
with the same outputs and no extra cost at inference.
"""

import dataclasses
from typing import Any

import jax
import numpy as np

from lm.errors import UsageError
from lm.model.config import ModelConfig

# optim.freeze pattern for every parameter but the adapters.
NOT_ADAPTERS = r'(?!.*lora_[ab]$).*'


def merge(params: Any, model_config: ModelConfig
          ) -> tuple[Any, ModelConfig]:
  """(params, model config) of the same model with its adapters merged."""
  if not model_config.lora_rank:
    raise UsageError('the model has no LoRA adapters (model.lora_rank=0)')
  scale = model_config.lora_alpha / model_config.lora_rank
  return (_merge(jax.device_get(params), scale),
          dataclasses.replace(model_config, lora_rank=0))


def _merge(tree, scale: float):
  if not isinstance(tree, dict):
    return tree
  if 'lora_a' not in tree:
    return {k: _merge(v, scale) for k, v in tree.items()}
  a, b = np.asarray(tree['lora_a']), np.asarray(tree['lora_b'])
  kernel = np.asarray(tree['kernel'])
  rank = a.shape[-1]
  # Scanned layers: A, B and the kernel share leading layer axes.
  lead = kernel.shape[:a.ndim + b.ndim - 2 - kernel.ndim]
  delta = (a.reshape(lead + (-1, rank)) @ b.reshape(lead + (rank, -1)))
  merged = {k: v for k, v in tree.items() if k not in ('lora_a', 'lora_b')}
  merged['kernel'] = (kernel + scale * delta.reshape(kernel.shape)).astype(
      kernel.dtype)
  return merged
