"""Differentially private training: DP-SGD (Abadi et al., 2016) and the
(epsilon, delta) it spends.

With `privacy.dp_sgd`, the train step (lm/train/steps.py) takes one gradient
per example, clips each to L2 norm `l2_clip` and sums them
(`clipped_sum`); the optimizer chain then starts with `noise`,
which adds Gaussian noise of standard deviation `noise_multiplier * l2_clip`
and divides by the batch size. Per-example gradients exist for
`privacy.microbatch` examples at a time (a scan over the batch's chunks), so
their memory is that many copies of the trainable parameters whatever the
batch size; frozen parameters have none.

What a run has spent is lm/evaluate/privacy_spent.py's (scoring reports it
without building a trainer).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from lm import sections
from lm.errors import UsageError


@dataclasses.dataclass(frozen=True)
class PrivacyConfig(sections.Section):
  """DP-SGD: per-example clipping to l2_clip, Gaussian noise of
  noise_multiplier * l2_clip; delta 0 means 1 / train examples.
  Per-example gradients are formed `microbatch` examples at a time (0: the
  whole batch), which bounds their memory."""

  NAME = 'privacy'
  dp_sgd: bool = False
  l2_clip: float = 1.0
  noise_multiplier: float = 1.0
  delta: float = 0.0
  microbatch: int = 8

  def validate(self) -> None:
    if not self.dp_sgd:
      return
    if self.l2_clip <= 0 or self.noise_multiplier < 0:
      raise UsageError('privacy.l2_clip must be > 0 and '
                       'privacy.noise_multiplier >= 0, got '
                       f'{self.l2_clip} and {self.noise_multiplier}')
    if not 0 <= self.delta < 1:
      raise UsageError(f'privacy.delta must be in [0, 1), got {self.delta}')


def validate(privacy_config, batch_size: int) -> None:
  """The privacy section, and its microbatches of data.batch_size."""
  settings = PrivacyConfig.from_config(privacy_config)
  if settings.dp_sgd and (settings.microbatch < 0 or (
      settings.microbatch and batch_size % settings.microbatch)):
    raise UsageError(
        f'privacy.microbatch={settings.microbatch} must divide '
        f'data.batch_size={batch_size} (0: the whole batch at once)')


def clipped_sum(grads, l2_clip: float):
  """The sum over their leading (example) axis of per-example gradients
  (a list of arrays), each example's clipped to L2 norm `l2_clip`."""
  squares = sum(jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(
      g.shape[0], -1), axis=1) for g in grads)
  factors = jnp.minimum(1.0, l2_clip / jnp.maximum(jnp.sqrt(squares), 1e-12))
  return [jnp.tensordot(factors.astype(g.dtype), g, axes=1) for g in grads]


def noise(privacy_config, seed: int, batch_size: int
          ) -> optax.GradientTransformation:
  """Adds N(0, (noise_multiplier * l2_clip)^2) to each coordinate of the
  clipped sum, then divides by the batch size: the noisy mean gradient.

  The state is the raw uint32 data of a PRNG key (the optimizer state is
  checkpointed), split at every step.
  """
  std = privacy_config.noise_multiplier * privacy_config.l2_clip

  def init(params):
    del params
    return jax.random.key_data(jax.random.key(seed))

  def update(updates, state, params=None):
    del params
    key, step_key = jax.random.split(jax.random.wrap_key_data(state))
    leaves, tree = jax.tree.flatten(updates)
    keys = jax.random.split(step_key, len(leaves))
    noisy = [(g + std * jax.random.normal(k, g.shape, g.dtype)) / batch_size
             for g, k in zip(leaves, keys)]
    return tree.unflatten(noisy), jax.random.key_data(key)

  return optax.GradientTransformation(init, update)
