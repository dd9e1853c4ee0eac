"""The pieces every attention path shares: the default scale of the scores
and masking them before the softmax."""

import jax
import jax.numpy as jnp

# Masked scores: finite, so a row that sees no key gets uniform weights, as
# jax.nn.dot_product_attention gives it, not NaN.
MASKED_SCORE = -1e30


def default_scale(head_width: int, scale: float | None = None) -> float:
  """1/sqrt(head width) unless a model sets its own (T5: 1)."""
  return head_width ** -0.5 if scale is None else scale


def mask(scores, allowed):
  """`scores` where `allowed` (broadcast), MASKED_SCORE elsewhere."""
  return jnp.where(allowed, scores, MASKED_SCORE)


def masked_softmax(scores, allowed=None):
  """Softmax over the last axis of float32 scores, after `mask` (None: every
  score counts)."""
  scores = scores.astype(jnp.float32)
  if allowed is not None:
    scores = mask(scores, allowed)
  return jax.nn.softmax(scores, axis=-1)
