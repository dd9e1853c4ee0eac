"""Multi-head attention (grouped-query and multi-query too), its rotary
positions and its KV cache.

The layer projects queries, keys and values, and hands the arithmetic to
lm/kernels/attention.py, which picks how to compute it. Decoding writes each
call's keys and values into the 'cache' collection at each row's own
positions, so a prefill and one-token steps share this code and prompts of
different lengths share a batch.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.kernels import attention as kernels
from lm.model import quantized
from lm.model.layers import HeadsDense
from lm.model.positions import apply_rotary

Dtype = Any

# The collection Attention fills with its softmax weights, [B, N, L, S] per
# call, when a caller makes it mutable (lm/infer/attention_maps.py does).
ATTENTION_MAPS = 'attention_maps'


class Attention(nn.Module):
  """Attention with `num_kv_heads` key/value heads shared by the query heads.

  Self-attention when `kv_BSD` is None, cross-attention otherwise.
  `positions_BL` None means 0, 1, 2, ... in every row. `key_mask_BS` is
  True at the keys a query may see (padding is False).
  `score_bias(query_positions_BL, key_positions_BS)` returns a [B, N, L, S]
  term added to the scores (T5's relative positions; called with the
  cache's positions when decoding); `scale_queries=False` drops the
  1/sqrt(H) factor, which T5 folds into its initialization instead.
  `kernel` (model.attention) and `block` say how to compute it
  (lm/kernels/attention.py).
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  causal: bool = True
  rotary_theta: float | None = None
  scale_queries: bool = True
  use_bias: bool = True
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: quantized.Quant = quantized.NONE
  kv_cache_int8: bool = False
  lora: dict = dataclasses.field(default_factory=dict)  # Dense's lora_*
  kernel: str = 'auto'
  block: int = 512

  @nn.compact
  def __call__(self, x_BLD, positions_BL=None, *, kv_BSD=None,
               key_mask_BS=None, score_bias=None, decode: bool = False):
    d_model = x_BLD.shape[-1]

    def project(x, heads, axes, name):
      return HeadsDense(
          (heads, self.head_dim), axes, use_bias=self.use_bias,
          init_std=self.init_std, dtype=self.dtype,
          param_dtype=self.param_dtype, quant=self.quant, name=name,
          **self.lora)(x)

    source_BSD = x_BLD if kv_BSD is None else kv_BSD
    q_BLNH = project(x_BLD, self.num_heads, ('embed', 'heads', 'head_dim'),
                     'query')
    k_BSKH = project(source_BSD, self.num_kv_heads,
                     ('embed', 'kv_heads', 'head_dim'), 'key')
    v_BSKH = project(source_BSD, self.num_kv_heads,
                     ('embed', 'kv_heads', 'head_dim'), 'value')
    ordered = positions_BL is None
    if ordered:
      positions_BL = jnp.broadcast_to(jnp.arange(x_BLD.shape[1]),
                                      x_BLD.shape[:2])
    if self.rotary_theta is not None:
      q_BLNH = apply_rotary(q_BLNH, positions_BL, self.rotary_theta)
      k_BSKH = apply_rotary(k_BSKH, positions_BL, self.rotary_theta)

    scale = None if self.scale_queries else 1.0
    if decode and kv_BSD is None:
      out_BLNH = self._cached_attention(q_BLNH, k_BSKH, v_BSKH, positions_BL,
                                        key_mask_BS, score_bias, scale)
    else:
      # Cross-attention's keys sit at their own places.
      key_positions_BS = positions_BL if kv_BSD is None else jnp.broadcast_to(
          jnp.arange(k_BSKH.shape[1]), k_BSKH.shape[:2])
      bias_BNLS = None
      if score_bias is not None:
        bias_BNLS = score_bias(positions_BL, key_positions_BS)
      # Self-attention over the model's own positions: the kernel may count
      # on them (None), which lets causal kernels skip keys no query sees.
      self_ordered = ordered and kv_BSD is None
      out_BLNH = kernels.attend(
          q_BLNH, k_BSKH, v_BSKH,
          None if self_ordered else positions_BL,
          None if self_ordered else key_positions_BS, causal=self.causal,
          key_mask_BS=key_mask_BS, bias_BNLS=bias_BNLS, scale=scale,
          kind=self.kernel, block=self.block)
      if self.is_mutable_collection(ATTENTION_MAPS):  # Only when asked.
        self.sow(ATTENTION_MAPS, 'probs', kernels.probabilities(
            q_BLNH, k_BSKH, bias_BNLS, kernels.allowed(
                positions_BL, key_positions_BS, self.causal, key_mask_BS),
            scale))
    out_BLNH = nn.with_logical_constraint(
        out_BLNH, ('batch', 'length', 'heads', 'head_dim'))
    return HeadsDense(
        (d_model,), ('heads', 'head_dim', 'embed'), to_heads=False,
        use_bias=self.use_bias, init_std=self.out_init_std, dtype=self.dtype,
        param_dtype=self.param_dtype, quant=self.quant, name='out',
        **self.lora)(out_BLNH)

  def _cached_attention(self, q_BLNH, k_BLKH, v_BLKH, positions_BL,
                        key_mask_BS, score_bias, scale):
    """Attention of this call's queries to every key in the cache (after
    writing this call's keys and values into it)."""
    keys_BKHS, values_BKHS = self._update_cache(k_BLKH, v_BLKH, positions_BL)
    batch, cache_len = q_BLNH.shape[0], keys_BKHS.shape[-1]
    if self.is_initializing():  # The cache holds this call's keys alone.
      key_positions_BS = positions_BL
    else:
      key_positions_BS = jnp.broadcast_to(jnp.arange(cache_len),
                                          (batch, cache_len))
    bias_BNLS = None
    if score_bias is not None:
      bias_BNLS = score_bias(positions_BL, key_positions_BS)
    # Slots not yet written sit after every query that can see them, so the
    # causal mask hides them.
    allowed_BLS = kernels.allowed(positions_BL, key_positions_BS, self.causal,
                                  key_mask_BS)
    return kernels.cached(q_BLNH, keys_BKHS, values_BKHS, allowed_BLS,
                          bias_BNLS, scale)

  def _update_cache(self, k_BLKH, v_BLKH, positions_BL):
    """Writes this call's keys/values at each row's positions; returns all,
    as [B, K, H, S]: the layout both attention matmuls read without moving
    the cache.

    The cache's length is fixed by the first (initializing) call. With
    `kv_cache_int8` the cache holds int8 and one scale per token and head,
    half the bytes of bfloat16 (a quarter of float32).
    """
    write = jax.vmap(
        lambda cache, new, start: jax.lax.dynamic_update_slice(
            cache, new, (0,) * (new.ndim - 1) + (start,)))
    starts_B = positions_BL[:, 0]
    to_cache_layout = lambda x_BLKH: jnp.transpose(x_BLKH, (0, 2, 3, 1))
    out = []
    for name, x_BLKH in (('cached_key', k_BLKH), ('cached_value', v_BLKH)):
      stored = {name: (to_cache_layout(x_BLKH), x_BLKH.dtype)}
      if self.kv_cache_int8:
        q_BLKH, scale_BLK1 = quantized.quantize_kv(x_BLKH)
        stored = {name: (to_cache_layout(q_BLKH), jnp.int8),
                  name + '_scale': (to_cache_layout(scale_BLK1), jnp.float32)}
      cached = {key: self.variable('cache', key, jnp.zeros, value.shape, dtype)
                for key, (value, dtype) in stored.items()}
      if self.is_initializing():
        out.append(to_cache_layout(x_BLKH))
        continue
      for key, variable in cached.items():
        variable.value = write(variable.value,
                               stored[key][0].astype(variable.value.dtype),
                               starts_B)
      if self.kv_cache_int8:
        out.append((cached[name].value * cached[name + '_scale'].value
                    ).astype(x_BLKH.dtype))
      else:
        out.append(cached[name].value)
    return out[0], out[1]
