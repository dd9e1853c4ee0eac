"""Attention: which kernel computes it, and the KV-cache read of decoding.

`attend` is softmax(q k^T * scale + bias, masked) v for a whole sequence,
by one of three paths:
  'xla'        jax.nn.dot_product_attention (the [L, S] scores in memory)
  'blockwise'  blocks of queries and keys with an online softmax, memory
               linear in the length (blockwise_attention.py)
  causal self-attention over the model's own positions 0, 1, 2, ... goes
  through query blocks that read only the keys up to their own end
  (causal_attention.py), which on a CPU run a hand-written backward pass.
`cached` is one decoding step's queries against a whole KV cache, in the
cache's [B, K, H, S] layout. `probabilities` gives the weights the model
applies, for attention maps. N query heads share K key/value heads (GQA).
"""

import jax
import jax.numpy as jnp

from lm.kernels import blockwise_attention
from lm.kernels import causal_attention
from lm.kernels import scores

KINDS = ('xla', 'blockwise')


def attend(q_BLNH, k_BSKH, v_BSKH, q_positions_BL, k_positions_BS, *,
           causal: bool, mask_BLS=None, bias_BNLS=None,
           scale: float | None = None, kind: str = 'xla', block: int = 512,
           ordered_positions: bool = False):
  """Attention of every query to the keys it may see: those `mask_BLS`
  allows and, if `causal`, those at positions up to the query's.
  `ordered_positions`: queries and keys are one sequence at 0, 1, 2, ...
  in every row (the model made the positions)."""
  if kind == 'blockwise':
    return blockwise_attention.blockwise_attention(
        q_BLNH, k_BSKH, v_BSKH, q_positions_BL, k_positions_BS,
        causal=causal, mask_BLS=mask_BLS, bias_BNLS=bias_BNLS, scale=scale,
        block=block)
  allowed_BLS = allowed(q_positions_BL, k_positions_BS, causal, mask_BLS)
  if causal and ordered_positions:
    return causal_attention.causal_attention(q_BLNH, k_BSKH, v_BSKH,
                                             bias_BNLS, allowed_BLS, scale)
  return jax.nn.dot_product_attention(
      q_BLNH, k_BSKH, v_BSKH, bias=bias_BNLS,
      mask=None if allowed_BLS is None else allowed_BLS[:, None],
      scale=scale)


def allowed(q_positions_BL, k_positions_BS, causal: bool, mask_BLS=None):
  """[B, L, S]: which keys each query may see (None: all of them)."""
  allowed_BLS = None
  if causal:
    allowed_BLS = k_positions_BS[:, None, :] <= q_positions_BL[:, :, None]
  if mask_BLS is not None:
    allowed_BLS = mask_BLS if allowed_BLS is None else allowed_BLS & mask_BLS
  return allowed_BLS


def cached(q_BLNH, keys_BKHS, values_BKHS, allowed_BLS, bias_BNLS=None,
           scale: float | None = None):
  """This step's queries against every key in the cache, [B, L, N, H]."""
  batch, length, heads, width = q_BLNH.shape
  kv_heads = keys_BKHS.shape[1]
  q_BLKGH = q_BLNH.reshape(batch, length, kv_heads, heads // kv_heads, width)
  scores_BKGLS = jnp.einsum(
      'blkgh,bkhs->bkgls', q_BLKGH, keys_BKHS,
      preferred_element_type=jnp.float32) * scores.default_scale(width, scale)
  if bias_BNLS is not None:
    scores_BKGLS += bias_BNLS.reshape(scores_BKGLS.shape).astype(jnp.float32)
  probs_BKGLS = scores.masked_softmax(
      scores_BKGLS, None if allowed_BLS is None else allowed_BLS[:, None, None])
  out_BLKGH = jnp.einsum('bkgls,bkhs->blkgh',
                         probs_BKGLS.astype(values_BKHS.dtype), values_BKHS)
  return out_BLKGH.reshape(q_BLNH.shape).astype(q_BLNH.dtype)


def probabilities(q_BLNH, k_BSKH, bias_BNLS, allowed_BLS,
                  scale: float | None = None):
  """[B, N, L, S] softmax weights of `attend` (which never holds them)."""
  heads, kv_heads = q_BLNH.shape[2], k_BSKH.shape[2]
  k_BSNH = jnp.repeat(k_BSKH, heads // kv_heads, axis=2)
  scores_BNLS = jnp.einsum(
      'blnh,bsnh->bnls', q_BLNH, k_BSNH,
      preferred_element_type=jnp.float32) * scores.default_scale(
          q_BLNH.shape[-1], scale)
  if bias_BNLS is not None:
    scores_BNLS += bias_BNLS.astype(jnp.float32)
  return scores.masked_softmax(
      scores_BNLS, None if allowed_BLS is None else allowed_BLS[:, None])
