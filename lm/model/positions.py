"""How tokens know their place: fixed sinusoids (Vaswani et al.), rotary
embeddings (Su et al.) and T5's learned relative-position buckets.
(Learned absolute positions are an `Embed` table, in lm/model/blocks.py.)
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lm.model.layers import logical

Dtype = Any


def sinusoidal_positions(positions_BL, features: int, dtype: Dtype):
  """The fixed sin/cos table of Vaswani et al. (2017), at given positions."""
  half = features // 2
  inv_freq = np.exp(-np.log(10_000.0) * np.arange(half) / half)
  angles_BLh = positions_BL[..., None].astype(jnp.float32) * inv_freq
  return jnp.concatenate(
      [jnp.sin(angles_BLh), jnp.cos(angles_BLh)], axis=-1).astype(dtype)


def apply_rotary(x_BLNH, positions_BL, theta: float):
  """Rotary position embedding (Su et al.), halves convention of HF Llama."""
  head_dim = x_BLNH.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
  angles_BLh = positions_BL[..., None].astype(jnp.float32) * inv_freq
  sin, cos = jnp.sin(angles_BLh)[:, :, None], jnp.cos(angles_BLh)[:, :, None]
  x1, x2 = jnp.split(x_BLNH.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
  return rotated.astype(x_BLNH.dtype)


def relative_position_buckets(relative_BLS, bidirectional: bool,
                              num_buckets: int, max_distance: int):
  """T5's bucketing of key - query offsets (Raffel et al., 2020).

  Half the buckets (per direction, if bidirectional) are exact small offsets;
  the rest grow logarithmically up to `max_distance`, beyond which offsets
  share the last bucket.
  """
  buckets = jnp.zeros_like(relative_BLS)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_BLS > 0).astype(relative_BLS.dtype) * num_buckets
    distance = jnp.abs(relative_BLS)
  else:
    distance = jnp.maximum(-relative_BLS, 0)
  exact = num_buckets // 2
  # Clamped to 1 so the log below stays finite where the exact branch wins.
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / exact)
  far = exact + (log_ratio / np.log(max_distance / exact)
                 * (num_buckets - exact)).astype(relative_BLS.dtype)
  far = jnp.minimum(far, num_buckets - 1)
  return buckets + jnp.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
  """A learned scalar per (bucket of key - query offset, head), added to
  scores as [B, N, L, S]. One table serves every layer of a stack, as in T5.
  """

  num_heads: int
  bidirectional: bool
  num_buckets: int = 32
  max_distance: int = 128
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query_positions_BL, key_positions_BS):
    relative_BLS = key_positions_BS[:, None, :] - query_positions_BL[:, :, None]
    buckets_BLS = relative_position_buckets(
        relative_BLS, self.bidirectional, self.num_buckets, self.max_distance)
    table = self.param(
        'embedding',
        logical(nn.initializers.normal(self.init_std), ('buckets', 'heads')),
        (self.num_buckets, self.num_heads), self.param_dtype)
    bias_BLSN = jnp.take(table, buckets_BLS, axis=0).astype(self.dtype)
    return jnp.transpose(bias_BLSN, (0, 3, 1, 2))
