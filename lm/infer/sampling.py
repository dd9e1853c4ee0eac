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
    threshold_B = _nucleus_floor(sorted_BV, sampling.top_p)
    logits_BV = jnp.where(logits_BV < threshold_B[:, None], -jnp.inf,
                          logits_BV)
  return jax.random.categorical(rng, logits_BV).astype(jnp.int32)


def _nucleus_floor(sorted_BV, top_p):
  """The lowest logit kept by top-p: the smallest prefix of the descending
  `sorted_BV` whose mass reaches `top_p` (a scalar or one per row) stays,
  so at least one token always does."""
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_BV = mass_before_BV < jnp.reshape(top_p, (-1, 1))
  return jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1)


def sample_rows(logits_SV, temperature_S, top_k_S, top_p_S, keys_S):
  """One token per row, each under its own settings (temperature 0:
  greedy; top_k 0 and top_p 1 disable those filters), and its
  log-probability under the unfiltered distribution. The batching
  engine's requests differ; sample_logits serves one setting for all."""
  logits_SV = logits_SV.astype(jnp.float32)
  logprobs_SV = jax.nn.log_softmax(logits_SV, axis=-1)
  greedy_S = jnp.argmax(logits_SV, axis=-1).astype(jnp.int32)

  def sampled(_):
    scaled_SV = logits_SV / jnp.maximum(temperature_S, 1e-6)[:, None]
    sorted_SV = -jnp.sort(-scaled_SV, axis=-1)
    vocab = logits_SV.shape[-1]
    kth_S = jnp.take_along_axis(
        sorted_SV, jnp.clip(jnp.where(top_k_S > 0, top_k_S, vocab) - 1, 0,
                            vocab - 1)[:, None], axis=-1)[:, 0]
    floor_S = jnp.maximum(kth_S, _nucleus_floor(sorted_SV, top_p_S))
    filtered_SV = jnp.where(scaled_SV < floor_S[:, None], -jnp.inf,
                            scaled_SV)
    drawn_S = jax.vmap(jax.random.categorical)(keys_S, filtered_SV)
    return jnp.where(temperature_S > 0, drawn_S.astype(jnp.int32), greedy_S)

  token_S = jax.lax.cond(jnp.any(temperature_S > 0), sampled,
                         lambda _: greedy_S, None)
  return token_S, jnp.take_along_axis(logprobs_SV, token_S[:, None],
                                      axis=-1)[:, 0]
