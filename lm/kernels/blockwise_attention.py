"""Attention in blocks, in memory linear in the sequence length.

`jax.nn.dot_product_attention`'s XLA path builds the [L, S] score matrix of
every head, and training keeps it for the backward pass: memory quadratic in
the sequence. Where no fused kernel exists (CPU, or shapes cuDNN refuses),
this computes the same attention a query block at a time, running over key
blocks with an online softmax (Milakov & Gimelshein, 2018) and recomputing
each query block in the backward pass (Rabe & Staats, 2021, "Self-attention
does not need O(n^2) memory"; the schedule of FlashAttention, Dao et al.,
2022). Only one [block, S] slice of scores is alive at a time, and a causal
query block skips the key blocks it cannot see.
"""

import jax
import jax.numpy as jnp

from lm.kernels import scores


def _pad_to(x, length: int, axis: int, value=0):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _blocks(x, block: int):
  """[B, Lp, ...] -> [Lp / block, B, block, ...]."""
  b, length = x.shape[:2]
  return jnp.moveaxis(x.reshape((b, length // block, block) + x.shape[2:]),
                      1, 0)


def blockwise_attention(q_BLNH, k_BSKH, v_BSKH, q_positions_BL,
                        k_positions_BS, *, causal: bool, mask_BLS=None,
                        bias_BNLS=None, scale: float | None = None,
                        block: int = 512):
  """softmax(q k^T * scale + bias, masked) v, as jax.nn.dot_product_attention.

  Keys are visible where `mask_BLS` allows and, if `causal`, where their
  position is at most the query's. N query heads share K key/value heads in
  groups (GQA). The output has q's shape and dtype.
  """
  batch, length, heads, width = q_BLNH.shape
  source_len, kv_heads = k_BSKH.shape[1], k_BSKH.shape[2]
  groups = heads // kv_heads
  scale = scores.default_scale(width, scale)
  block_q, block_k = min(block, length), min(block, source_len)
  padded_q = -(-length // block_q) * block_q
  padded_k = -(-source_len // block_k) * block_k

  q = _pad_to(q_BLNH, padded_q, 1).reshape(
      batch, padded_q, kv_heads, groups, width)
  q_pos = _pad_to(q_positions_BL, padded_q, 1)
  k_pos = _pad_to(k_positions_BS, padded_k, 1)
  key_valid = jnp.arange(padded_k) < source_len
  if mask_BLS is not None:
    mask_BLS = _pad_to(_pad_to(mask_BLS, padded_q, 1, False), padded_k, 2,
                       False)
  if bias_BNLS is not None:
    bias_BNLS = _pad_to(_pad_to(bias_BNLS, padded_q, 2), padded_k, 3)
    bias_BNLS = jnp.moveaxis(bias_BNLS, 2, 1).reshape(
        batch, padded_q, kv_heads, groups, padded_k)
  key_blocks = (_blocks(_pad_to(k_BSKH, padded_k, 1), block_k),
                _blocks(_pad_to(v_BSKH, padded_k, 1), block_k),
                _blocks(k_pos, block_k),
                key_valid.reshape(-1, block_k), jnp.arange(padded_k // block_k))

  def query_block(inputs):
    q_bqKGH, pos_bq, mask_bqS, bias_bqKGS = inputs

    def key_block(carry, keys):
      k_bkKH, v_bkKH, pos_bk, valid_k, index = keys

      def attend(carry):
        acc, row_max, row_sum = carry
        s = jnp.einsum('bqkgh,bskh->bkgqs', q_bqKGH, k_bkKH,
                       preferred_element_type=jnp.float32) * scale
        if bias_bqKGS is not None:
          s += jnp.moveaxis(jax.lax.dynamic_slice_in_dim(
              bias_bqKGS, index * block_k, block_k, axis=-1), 1, 3
                           ).astype(jnp.float32)
        allowed = jnp.broadcast_to(valid_k, (batch, block_q, block_k))
        if causal:
          allowed &= pos_bk[:, None, :] <= pos_bq[:, :, None]
        if mask_bqS is not None:
          allowed &= jax.lax.dynamic_slice_in_dim(
              mask_bqS, index * block_k, block_k, axis=-1)
        s = scores.mask(s, allowed[:, None, None])
        new_max = jnp.maximum(row_max, s.max(-1))
        correction = jnp.exp(row_max - new_max)
        p = jnp.exp(s - new_max[..., None])
        row_sum = row_sum * correction + p.sum(-1)
        acc = acc * correction[..., None] + jnp.einsum(
            'bkgqs,bskh->bkgqh', p.astype(v_bkKH.dtype), v_bkKH,
            preferred_element_type=jnp.float32)
        return acc, new_max, row_sum

      if not causal:
        return attend(carry), None
      # A key block wholly after every query of this block adds nothing.
      visible = jnp.min(pos_bk) <= jnp.max(pos_bq)
      return jax.lax.cond(visible, attend, lambda c: c, carry), None

    init = (jnp.zeros((batch, kv_heads, groups, block_q, width), jnp.float32),
            jnp.full((batch, kv_heads, groups, block_q), scores.MASKED_SCORE,
                     jnp.float32),
            jnp.zeros((batch, kv_heads, groups, block_q), jnp.float32))
    (acc, _, row_sum), _ = jax.lax.scan(key_block, init, key_blocks)
    out = acc / row_sum[..., None]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).astype(q_BLNH.dtype)

  query_blocks = (_blocks(q, block_q), _blocks(q_pos, block_q),
                  None if mask_BLS is None else _blocks(mask_BLS, block_q),
                  None if bias_BNLS is None else _blocks(bias_BNLS, block_q))
  # Checkpointed: the backward pass recomputes a query block's scores
  # instead of keeping every block's.
  out = jax.lax.map(jax.checkpoint(query_block), query_blocks)
  out = jnp.moveaxis(out, 0, 1).reshape(batch, padded_q, heads, width)
  return out[:, :length]
