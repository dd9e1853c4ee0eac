"""Choosing the next token: greedy, temperature, top-k and top-p."""

import dataclasses
import math

import jax
import jax.numpy as jnp

from lm.errors import UsageError
from lm.kernels.argmax import argmax


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def validate(self, vocab_size: int | None = None):
    """Raises UsageError for a setting out of range (`top_k` past the
    vocabulary of `vocab_size` tokens too)."""
    if self.max_new_tokens <= 0:
      raise UsageError(f'max_new_tokens must be positive, got '
                       f'{self.max_new_tokens}')
    if not (math.isfinite(self.temperature) and self.temperature >= 0):
      raise UsageError(f'temperature must be a finite number >= 0, got '
                       f'{self.temperature}')
    if self.top_k < 0:
      raise UsageError(f'top_k must be >= 0, got {self.top_k}')
    if vocab_size is not None and self.top_k > vocab_size:
      raise UsageError(f'top_k={self.top_k} exceeds the vocabulary of '
                       f'{vocab_size} tokens; give at most {vocab_size} (0 '
                       'disables it)')
    if not 0 < self.top_p <= 1:
      raise UsageError(f'top_p must be in (0, 1], got {self.top_p}')


# jax.random keys take seeds that fit in 64 bits.
SEEDS = (-2**63, 2**64 - 1)


def check_seed(seed: int) -> int:
  if not SEEDS[0] <= seed <= SEEDS[1]:
    raise UsageError(f'the seed {seed} does not fit in 64 bits; give one in '
                     f'[{SEEDS[0]}, {SEEDS[1]}]')
  return seed


def sample_logits(logits_BV, rng, sampling: SamplingConfig):
  """Draws one token per row after temperature, top-k and top-p filtering."""
  if sampling.temperature == 0:
    return argmax(logits_BV)
  logits_BV = logits_BV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth_B1 = jax.lax.top_k(logits_BV, sampling.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if sampling.top_p < 1:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always >= 1 token).
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_BV = mass_before_BV < sampling.top_p
    threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1,
                           keepdims=True)
    logits_BV = jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV).astype(jnp.int32)
