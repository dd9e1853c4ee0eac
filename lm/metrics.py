"""Language-modelling metrics: loss, perplexity, bits per byte, accuracy.

Per-batch functions return *sums* (jit-friendly, and exact when batches are
combined); `summarize` turns accumulated sums into the reported numbers.
Bits per byte divides the total negative log-likelihood (in bits) by the
number of UTF-8 bytes the predicted tokens stand for, so models with
different tokenizers can be compared.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def token_nll(logits_BLV, targets_BL):
  """Negative log-likelihood of each target token, in nats (float32)."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None],
                                        axis=-1)[..., 0]
  return log_z_BL - target_logit_BL


def lm_sums(logits_BLV, targets_BL, weights_BL, token_bytes_V=None):
  """Sums over a batch: nll, correct predictions, tokens (and bytes)."""
  nll_BL = token_nll(logits_BLV, targets_BL)
  correct_BL = jnp.argmax(logits_BLV, axis=-1) == targets_BL
  sums = {
      'nll': jnp.sum(nll_BL * weights_BL),
      'correct': jnp.sum(correct_BL * weights_BL),
      'tokens': jnp.sum(weights_BL),
  }
  if token_bytes_V is not None:
    sums['bytes'] = jnp.sum(jnp.take(token_bytes_V, targets_BL) * weights_BL)
  return sums


def summarize(sums) -> dict[str, float]:
  sums = {k: float(np.asarray(v)) for k, v in sums.items()}
  loss = sums['nll'] / max(sums['tokens'], 1.0)
  return {
      'loss': loss,
      'perplexity': math.exp(min(loss, 700.0)),
      'bits_per_byte': sums['nll'] / math.log(2) / max(sums['bytes'], 1.0),
      'token_accuracy': sums['correct'] / max(sums['tokens'], 1.0),
  }
