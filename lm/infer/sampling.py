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
    problem = temperature_problem(self.temperature)
    if problem:
      raise UsageError(problem)
    if self.top_k < 0:
      raise UsageError(f'top_k must be >= 0, got {self.top_k}')
    if vocab_size is not None and self.top_k > vocab_size:
      raise UsageError(f'top_k={self.top_k} exceeds the vocabulary of '
                       f'{vocab_size} tokens; give at most {vocab_size} (0 '
                       'disables it)')
    if not 0 < self.top_p <= 1:
      raise UsageError(f'top_p must be in (0, 1], got {self.top_p}')


# Below this the logits are divided by it instead (a float32 temperature
# of 1e-38 is subnormal, which the CPU flushes to zero): such a temperature
# would not mean what it says.
MIN_TEMPERATURE = 1e-6


def temperature_problem(temperature: float) -> str | None:
  """Why `temperature` cannot be sampled at (a phrase), or None."""
  if not (math.isfinite(temperature) and temperature >= 0):
    return f'temperature must be a finite number >= 0, got {temperature}'
  if 0 < temperature < MIN_TEMPERATURE:
    return (f'temperature={temperature} is too small to sample at; give 0 '
            f'for greedy decoding or at least {MIN_TEMPERATURE}')
  return None


# A jax.random key holds 32 bits of a seed (without 64-bit mode, larger
# and negative seeds wrap: 2**32 would repeat seed 0's samples), so the
# seeds lm takes are those 32 bits, every one a stream of its own.
SEEDS = (0, 2**32 - 1)


def valid_seed(seed: int) -> bool:
  """Whether `seed` makes a key of its own (the API's, the scripts' and
  the config's checks all ask this)."""
  return SEEDS[0] <= seed <= SEEDS[1]


def check_seed(seed: int, name: str = 'the seed') -> int:
  if not valid_seed(seed):
    raise UsageError(f'{name} {seed} is not in [{SEEDS[0]}, {SEEDS[1]}]: a '
                     'random key holds 32 bits of a seed, and others would '
                     "repeat another seed's random numbers; give one in "
                     'that range')
  return seed


def sample(logits_BV, keys_B, temperature, top_k, top_p):
  """One token per row after temperature, top-k and top-p filtering, and
  its log-probability under the unfiltered distribution.

  The settings are Python numbers, one for every row and known when traced
  (greedy then compiles no sampling at all; filters at their neutral value
  no sort), or arrays of one per row, as the batching engine's requests
  differ (temperature 0: greedy; top_k 0 and top_p 1: no filter). `keys_B`
  holds a key per row. Greedy is the argmax kernel's, wherever it is used.
  """
  logits_BV = logits_BV.astype(jnp.float32)
  greedy_B = argmax(logits_BV)
  static = all(isinstance(v, (int, float))
               for v in (temperature, top_k, top_p))

  def drawn(_):
    rows, vocab = logits_BV.shape
    temperature_B = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32),
                                     (rows,))
    scaled_BV = logits_BV / jnp.maximum(temperature_B, MIN_TEMPERATURE)[:, None]
    if not static or top_k or top_p < 1:
      sorted_BV = -jnp.sort(-scaled_BV, axis=-1)
      top_k_B = jnp.broadcast_to(jnp.asarray(top_k, jnp.int32), (rows,))
      kth_B = jnp.take_along_axis(
          sorted_BV, jnp.clip(jnp.where(top_k_B > 0, top_k_B, vocab) - 1, 0,
                              vocab - 1)[:, None], axis=-1)[:, 0]
      floor_B = jnp.maximum(kth_B, _nucleus_floor(sorted_BV, top_p))
      scaled_BV = jnp.where(scaled_BV < floor_B[:, None], -jnp.inf,
                            scaled_BV)
    drawn_B = jax.vmap(jax.random.categorical)(keys_B, scaled_BV)
    return jnp.where(temperature_B > 0, drawn_B.astype(jnp.int32), greedy_B)

  if static:
    token_B = greedy_B if temperature == 0 else drawn(None)
  else:
    token_B = jax.lax.cond(jnp.any(jnp.asarray(temperature) > 0), drawn,
                           lambda _: greedy_B, None)
  logprobs_BV = jax.nn.log_softmax(logits_BV, axis=-1)
  return token_B, jnp.take_along_axis(logprobs_BV, token_B[:, None],
                                      axis=-1)[:, 0]


def _nucleus_floor(sorted_BV, top_p):
  """The lowest logit kept by top-p: the smallest prefix of the descending
  `sorted_BV` whose mass reaches `top_p` (a scalar or one per row) stays,
  so at least one token always does."""
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_BV = mass_before_BV < jnp.reshape(top_p, (-1, 1))
  return jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1)
