"""Linen building blocks shared by every Transformer family.

Embeddings, norms, feed-forward and attention (multi-head, grouped-query and
multi-query, rotary positions, KV cache). Every parameter is created with
logical axis names; `lm/sharding.py` maps them to mesh axes.

Shape letters in names: B batch, L query length, S key length, D model width,
N query heads, K key/value heads, H head width, F feed-forward width, V vocab.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import blockwise_attention
from lm import causal_attention
from lm import matmul
from lm.compress import quantize
from lm.compress.quantize import Quant

Dtype = Any


def logical(init, axes):
  """An initializer that tags its parameter with logical axis names."""
  return nn.with_logical_partitioning(init, axes)


class Embed(nn.Module):
  """Token embedding; `attend` reuses the table as a tied output layer.

  Quantized (`quant`), the table has one scale per row (int8) or per group of
  a row (int4); a lookup dequantizes only the rows it gathers.
  """

  num_embeddings: int
  features: int
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axes: tuple[str, str] = ('vocab', 'embed')
  quant: Quant = quantize.NONE
  # Factorized (ALBERT): a table of factor_dim-wide rows and a 'projection'
  # [factor_dim, features] that lookups go through and `attend` reverses.
  factor_dim: int = 0

  def setup(self):
    width = self.factor_dim or self.features
    shape = (self.num_embeddings, width)
    if self.factor_dim:
      self.projection = self.param(
          'projection', logical(nn.initializers.normal(
              1 / np.sqrt(self.factor_dim)), (None, self.axes[1])),
          (self.factor_dim, self.features), self.param_dtype)
    if self.quant.bits:
      self.table = quantize.quantized_param(
          self, 'embedding', shape, self.axes, self.param_dtype, (-1,),
          self.quant)
    else:
      self.table = self.param(
          'embedding', logical(nn.initializers.normal(self.init_std),
                               self.axes), shape, self.param_dtype)

  @property
  def embedding(self):
    """The whole table as floats."""
    if self.quant.bits:
      return quantize.dequantize(*self.table, -1, self.quant)
    return self.table

  def __call__(self, ids):
    if self.quant.bits:
      q, scale = (jnp.take(t, ids, axis=0) for t in self.table)
      rows = quantize.dequantize(q, scale, -1, self.quant).astype(self.dtype)
    else:
      rows = jnp.take(self.table, ids, axis=0).astype(self.dtype)
    if self.factor_dim:
      rows = rows @ self.projection.astype(self.dtype)
    return rows

  def attend(self, x_BLD, decoding_step: bool = False):
    """Logits against every row; `decoding_step` lays the product out for
    one token per row in a decoding loop (lm/matmul.py)."""
    if self.factor_dim:
      x_BLD = x_BLD @ self.projection.astype(self.dtype).T
    return matmul.tied_logits(x_BLD, self.embedding.astype(self.dtype),
                              decoding_step=decoding_step)


class Dense(nn.Module):
  """x W + b over the last axis, [..., in] -> [..., features].

  `nn.Dense`'s parameter names and shapes ('kernel' [in, features], 'bias'),
  with logical axes and optional quantized kernels.
  """

  features: int
  axes: tuple[str, str]
  use_bias: bool = True
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: Quant = quantize.NONE
  # LoRA (Hu et al., 2021): with rank > 0 and this layer's name among the
  # targets, y += (alpha / rank) * x A B, with A [in, rank] and B [rank,
  # out] ('lora_a', 'lora_b'; B starts at zero, so training starts from the
  # layer as it was).
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, x):
    return _project(self, x, (x.shape[-1], self.features), (-2,),
                    (self.features,), self.axes[-1:])


def _project(module, x, shape, contract, features, bias_axes):
  """x times `module`'s 'kernel' of `shape` (contracted on `contract`), plus
  its 'bias' if it has one: the body of Dense and HeadsDense."""
  kernel = quantize.kernel_param(
      module, 'kernel', shape, module.axes,
      nn.initializers.normal(module.init_std), module.param_dtype, contract,
      module.quant)
  # One 2-D matmul over the merged input and output axes (reshapes of
  # row-major arrays, free), with the weight gradient lm/matmul.py lays out
  # for XLA:CPU: bench-gpt's train step 0.5994 -> 0.5862 s (medians of 22
  # alternating steps in one process). As the einsum '...nh,nhd->...d',
  # XLA:CPU also transposed the out-of-heads kernel in every decode step
  # (2.5% of generate's time).
  x_flat = x.reshape(x.shape[:-len(contract)] + (-1,))
  y = matmul.dense(x_flat.astype(module.dtype), kernel.reshape(
      x_flat.shape[-1], -1).astype(module.dtype))
  y = y.reshape(x.shape[:-len(contract)] + tuple(features))
  if module.use_bias:
    bias = module.param('bias', logical(nn.initializers.zeros, bias_axes),
                        features, module.param_dtype)
    y += bias.astype(module.dtype)
  if module.lora_rank and module.name in module.lora_targets:
    y += _lora(module, x, shape, len(contract))
  return y


def _lora(module, x, shape, num_in: int):
  """The low-rank update (alpha / r) x A B of a kernel of `shape` whose first
  `num_in` axes are its inputs."""
  r = module.lora_rank
  in_shape, out_shape = shape[:num_in], shape[num_in:]
  in_axes, out_axes = module.axes[:num_in], module.axes[num_in:]
  a = module.param('lora_a', logical(nn.initializers.normal(
      1 / np.sqrt(np.prod(in_shape))), in_axes + (None,)), in_shape + (r,),
                   module.param_dtype)
  b = module.param('lora_b', logical(nn.initializers.zeros,
                                     (None,) + out_axes), (r,) + out_shape,
                   module.param_dtype)
  x_flat = x.reshape(x.shape[:x.ndim - num_in] + (-1,)).astype(module.dtype)
  h = x_flat @ a.reshape(-1, r).astype(module.dtype)
  out = h @ b.reshape(r, -1).astype(module.dtype)
  return (module.lora_alpha / r) * out.reshape(x.shape[:x.ndim - num_in] +
                                               out_shape)


class HeadsDense(Dense):
  """A dense layer into or out of heads: [.., D] -> [.., N, H] (`to_heads`)
  or [.., N, H] -> [.., D].

  The kernel is created in its final 3-D shape (what `nn.DenseGeneral` names
  'kernel' and 'bias', with the same shapes), so its logical axes stay valid
  when a mesh is set; DenseGeneral reshapes a 2-D kernel, which the sharding
  annotation of a 3-D one rejects (flax issue 3676).
  """

  features: tuple[int, ...]
  axes: tuple[str, ...]
  to_heads: bool = True

  @nn.compact
  def __call__(self, x):
    if self.to_heads:  # [.., D] x [D, N, H]
      return _project(self, x, (x.shape[-1],) + self.features, (-3,),
                      self.features, self.axes[1:])
    # [.., N, H] x [N, H, D]
    return _project(self, x, x.shape[-2:] + self.features, (-3, -2),
                    self.features, self.axes[-1:])


def make_norm(kind: str, eps: float, dtype: Dtype, param_dtype: Dtype,
              name: str) -> nn.Module:
  """LayerNorm (scale and bias) or RMSNorm (scale only)."""
  ones = logical(nn.initializers.ones, ('embed',))
  if kind == 'layernorm':
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=ones,
        bias_init=logical(nn.initializers.zeros, ('embed',)), name=name)
  if kind == 'rmsnorm':
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      scale_init=ones, name=name)
  raise ValueError(f'unknown norm {kind!r}')


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


ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': nn.gelu,  # tanh approximation, as GPT-2
    'gelu_exact': lambda x: nn.gelu(x, approximate=False),
    'silu': nn.silu,
}


class Mlp(nn.Module):
  """Feed-forward block: act(x W_in) W_out, or gated: (act(x W_0) * x W_1) W_out.

  `activation` is 'relu', 'gelu', 'gelu_exact' or 'silu'; `gated` turns
  'silu' into SwiGLU and 'gelu' into GeGLU (Shazeer, 2020).
  """

  d_ff: int
  activation: str = 'gelu'
  gated: bool = False
  use_bias: bool = True
  dropout_rate: float = 0.0
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: Quant = quantize.NONE
  lora: dict = dataclasses.field(default_factory=dict)  # Dense's lora_*

  @nn.compact
  def __call__(self, x_BLD, deterministic: bool = True):
    d_model = x_BLD.shape[-1]

    def dense(features, axes, std, name):
      return Dense(features, axes, use_bias=self.use_bias, init_std=std,
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   quant=self.quant, name=name, **self.lora)

    act = ACTIVATIONS[self.activation]
    if self.gated:
      h_BLF = act(dense(self.d_ff, ('embed', 'mlp'), self.init_std, 'wi_0')(
          x_BLD)) * dense(self.d_ff, ('embed', 'mlp'), self.init_std, 'wi_1')(
              x_BLD)
    else:
      h_BLF = act(dense(self.d_ff, ('embed', 'mlp'), self.init_std, 'wi')(
          x_BLD))
    h_BLF = nn.with_logical_constraint(h_BLF, ('batch', 'length', 'mlp'))
    h_BLF = nn.Dropout(self.dropout_rate)(h_BLF, deterministic=deterministic)
    return dense(d_model, ('mlp', 'embed'), self.out_init_std, 'wo')(h_BLF)


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
  """A learned scalar per (bucket of key - query offset, head), added to scores.

  One table serves every layer of a stack, as in T5.
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


# The collection Attention fills with its softmax weights, [B, N, L, S] per
# call, when a caller makes it mutable (lm/attention_maps.py does).
ATTENTION_MAPS = 'attention_maps'


def _attention_probs(q_BLNH, k_BSKH, bias_BNLS, allowed_BLS, scale):
  """The weights jax.nn.dot_product_attention applies, computed apart (the
  fused kernel never materializes them)."""
  heads, kv_heads = q_BLNH.shape[2], k_BSKH.shape[2]
  k_BSNH = jnp.repeat(k_BSKH, heads // kv_heads, axis=2)
  scores_BNLS = jnp.einsum('blnh,bsnh->bnls', q_BLNH, k_BSNH,
                           preferred_element_type=jnp.float32) * (
                               q_BLNH.shape[-1] ** -0.5 if scale is None
                               else scale)
  if bias_BNLS is not None:
    scores_BNLS += bias_BNLS.astype(jnp.float32)
  if allowed_BLS is not None:
    scores_BNLS = jnp.where(allowed_BLS[:, None], scores_BNLS,
                            jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores_BNLS, axis=-1)


class Attention(nn.Module):
  """Multi-head attention with `num_kv_heads` key/value heads (GQA/MQA).

  Self-attention when `kv_BSD` is None, cross-attention otherwise. With
  `decode=True` keys and values go into the 'cache' collection at each row's
  own positions, so prefill and one-token steps share this code and prompts
  of different lengths share a batch. `score_bias(query_positions_BL,
  key_positions_BS)` returns a [B, N, L, S] term added to the scores (T5's
  relative positions; called with the cache's positions when decoding);
  `scale_queries=False` drops the 1/sqrt(H)
  factor, which T5 folds into its initialization instead.
  `block` > 0 computes attention in blocks of that many queries and keys,
  in memory linear in the length (lm/blockwise_attention.py); 0 uses
  `jax.nn.dot_product_attention`. Decoding reads the KV cache whole.
  `ordered_positions` says every row's positions are 0, 1, 2, ... (the model
  made them), so a causal query never sees a later index: the queries then
  go in blocks that read only the keys up to their own end
  (lm/causal_attention.py).
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
  quant: Quant = quantize.NONE
  kv_cache_int8: bool = False
  lora: dict = dataclasses.field(default_factory=dict)  # Dense's lora_*
  block: int = 0
  ordered_positions: bool = False

  @nn.compact
  def __call__(self, x_BLD, positions_BL, *, kv_BSD=None, mask_BLS=None,
               score_bias=None, decode: bool = False):
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
    if self.rotary_theta is not None:
      q_BLNH = apply_rotary(q_BLNH, positions_BL, self.rotary_theta)
      k_BSKH = apply_rotary(k_BSKH, positions_BL, self.rotary_theta)

    scale = None if self.scale_queries else 1.0
    if decode and kv_BSD is None:
      out_BLNH = self._cached_attention(q_BLNH, k_BSKH, v_BSKH, positions_BL,
                                        mask_BLS, score_bias, scale)
    elif self.block:
      # Cross-attention's keys sit at their own places.
      key_positions_BS = positions_BL if kv_BSD is None else jnp.broadcast_to(
          jnp.arange(k_BSKH.shape[1]), k_BSKH.shape[:2])
      bias_BNLS = None
      if score_bias is not None:
        bias_BNLS = score_bias(positions_BL, key_positions_BS)
      out_BLNH = blockwise_attention.blockwise_attention(
          q_BLNH, k_BSKH, v_BSKH, positions_BL, key_positions_BS,
          causal=self.causal, mask_BLS=mask_BLS, bias_BNLS=bias_BNLS,
          scale=scale, block=self.block)
    else:
      allowed_BLS = None
      if self.causal:
        allowed_BLS = positions_BL[:, None, :] <= positions_BL[:, :, None]
      if mask_BLS is not None:
        allowed_BLS = (mask_BLS if allowed_BLS is None
                       else allowed_BLS & mask_BLS)
      bias_BNLS = None
      if score_bias is not None:
        bias_BNLS = score_bias(positions_BL, positions_BL)
      if self.causal and self.ordered_positions and kv_BSD is None:
        out_BLNH = causal_attention.causal_attention(
            q_BLNH, k_BSKH, v_BSKH, bias_BNLS, allowed_BLS, scale)
      else:
        out_BLNH = jax.nn.dot_product_attention(
            q_BLNH, k_BSKH, v_BSKH, bias=bias_BNLS,
            mask=None if allowed_BLS is None else allowed_BLS[:, None],
            scale=scale)
      if self.is_mutable_collection(ATTENTION_MAPS):  # Only when asked.
        self.sow(ATTENTION_MAPS, 'probs', _attention_probs(
            q_BLNH, k_BSKH, bias_BNLS, allowed_BLS, scale))
    out_BLNH = nn.with_logical_constraint(
        out_BLNH, ('batch', 'length', 'heads', 'head_dim'))
    return HeadsDense(
        (d_model,), ('heads', 'head_dim', 'embed'), to_heads=False,
        use_bias=self.use_bias, init_std=self.out_init_std, dtype=self.dtype,
        param_dtype=self.param_dtype, quant=self.quant, name='out',
        **self.lora)(out_BLNH)

  def _cached_attention(self, q_BLNH, k_BLKH, v_BLKH, positions_BL, mask_BLS,
                        score_bias, scale):
    """Attention of this call's queries to every key in the cache (after
    writing this call's keys and values into it)."""
    keys_BKHS, values_BKHS = self._update_cache(k_BLKH, v_BLKH, positions_BL)
    batch, length, heads, width = q_BLNH.shape
    kv_heads, cache_len = keys_BKHS.shape[1], keys_BKHS.shape[-1]
    if self.is_initializing():  # The cache holds this call's keys alone.
      key_positions_BS = positions_BL
    else:
      key_positions_BS = jnp.broadcast_to(jnp.arange(cache_len),
                                          (batch, cache_len))
    q_BLKGH = q_BLNH.reshape(batch, length, kv_heads, heads // kv_heads,
                             width)
    scores_BKGLS = jnp.einsum(
        'blkgh,bkhs->bkgls', q_BLKGH, keys_BKHS,
        preferred_element_type=jnp.float32) * (
            width ** -0.5 if scale is None else scale)
    if score_bias is not None:
      scores_BKGLS += score_bias(positions_BL, key_positions_BS).reshape(
          scores_BKGLS.shape).astype(jnp.float32)
    allowed_BLS = key_positions_BS[:, None, :] <= positions_BL[:, :, None]
    if not self.causal:
      allowed_BLS = jnp.ones_like(allowed_BLS)
    if mask_BLS is not None:
      allowed_BLS &= mask_BLS
    scores_BKGLS = jnp.where(allowed_BLS[:, None, None], scores_BKGLS,
                             jnp.finfo(jnp.float32).min)
    probs_BKGLS = jax.nn.softmax(scores_BKGLS, axis=-1)
    out_BLKGH = jnp.einsum('bkgls,bkhs->blkgh',
                           probs_BKGLS.astype(values_BKHS.dtype), values_BKHS)
    return out_BLKGH.reshape(q_BLNH.shape).astype(q_BLNH.dtype)

  def _update_cache(self, k_BLKH, v_BLKH, positions_BL):
    """Writes this call's keys/values at each row's positions; returns all,
    as [B, K, H, S]: the layout both attention matmuls read without moving
    the cache (a [B, S, K, H] cache was transposed at every decoding step).

    The cache's length is fixed by the first (initializing) call. Slots not
    yet written hold stale values, but they sit at positions later than any
    query that can see them, so the causal mask hides them. With
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
      parts = {name: (to_cache_layout(x_BLKH), x_BLKH.dtype)}
      if self.kv_cache_int8:
        q_BLKH, scale_BLK1 = quantize.quantize_kv(x_BLKH)
        parts = {name: (to_cache_layout(q_BLKH), jnp.int8),
                 name + '_scale': (to_cache_layout(scale_BLK1), jnp.float32)}
      cached = {key: self.variable('cache', key, jnp.zeros, value.shape, dtype)
                for key, (value, dtype) in parts.items()}
      if self.is_initializing():
        out.append(to_cache_layout(x_BLKH))
        continue
      for key, variable in cached.items():
        variable.value = write(variable.value,
                               parts[key][0].astype(variable.value.dtype),
                               starts_B)
      if self.kv_cache_int8:
        out.append((cached[name].value * cached[name + '_scale'].value
                    ).astype(x_BLKH.dtype))
      else:
        out.append(cached[name].value)
    return out[0], out[1]
