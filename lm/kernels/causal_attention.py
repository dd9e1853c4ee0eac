"""Causal self-attention over the model's own positions 0, 1, 2, ...

Query block i of n reads only the keys up to its own end, so 4 blocks do
5/8 of the score and value products and of the softmax work. The blocks run
through a hand-written forward and backward pass (`jax.custom_vjp`) laid out
for XLA:CPU, which has no fused attention kernel:

- heads go first ([B, K, G, L, H]; keys as [B, K, H, S]), so q, k, v and
  the output are transposed once, not per block, and every product batches
  over its leading axes;
- the softmax backward reduces dO * O over the head width (Dao et al.,
  2022, FlashAttention's D), not dP * P over the keys: autodiff's reduction
  over [B, N, L, S] took a quarter of attention's time;
- the forward keeps exp(scores - max) and the row sums, and normalizes the
  [L, H] output instead of the [L, S] weights.

docs/performance.md has the measurements behind each choice;
lm/kernels/attention.py picks this kernel on CPUs.
"""

import functools

import jax
import jax.numpy as jnp

from lm.kernels import scores

# Causal self-attention splits its queries into at most this many blocks of
# at least _MIN_QUERY_BLOCK queries (shorter sequences stay whole).
_MAX_QUERY_BLOCKS = 4
_MIN_QUERY_BLOCK = 64


def query_block_edges(length: int) -> list[int]:
  """Where the query blocks of a sequence of `length` start and end."""
  blocks = max(1, min(_MAX_QUERY_BLOCKS, length // _MIN_QUERY_BLOCK))
  return [length * i // blocks for i in range(blocks + 1)]


def causal_attention(q_BLNH, k_BSKH, v_BSKH, bias_BNLS, allowed_BLS,
                     scale: float | None):
  """`jax.nn.dot_product_attention(q, k, v, bias, allowed[:, None], scale)`
  of causal self-attention whose positions run 0, 1, 2, ... in every row,
  so `allowed_BLS` (the causal mask, and any padding mask) is False above
  the diagonal. N query heads share K key/value heads in groups (GQA).
  """
  scale = scores.default_scale(q_BLNH.shape[-1], scale)
  edges = tuple(query_block_edges(q_BLNH.shape[1]))
  return _blocked(q_BLNH, k_BSKH, v_BSKH, bias_BNLS, allowed_BLS, scale,
                  edges)


def _spans(edges):
  return list(zip(edges[:-1], edges[1:]))


def _grouped_bias(bias_BNLS, kv_heads: int):
  """[B or 1, N, L, S] -> [B or 1, K, G, L, S]."""
  b, n = bias_BNLS.shape[:2]
  return bias_BNLS.reshape((b, kv_heads, n // kv_heads) + bias_BNLS.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blocked(q_BLNH, k_BSKH, v_BSKH, bias_BNLS, allowed_BLS, scale, edges):
  return _forward(q_BLNH, k_BSKH, v_BSKH, bias_BNLS, allowed_BLS, scale,
                  edges)[0]


def _forward(q_BLNH, k_BSKH, v_BSKH, bias_BNLS, allowed_BLS, scale, edges):
  b, length, heads, width = q_BLNH.shape
  kv_heads = k_BSKH.shape[2]
  groups = heads // kv_heads
  q_BKGLH = q_BLNH.reshape(b, length, kv_heads, groups, width).transpose(
      0, 2, 3, 1, 4)
  k_BKHS = k_BSKH.transpose(0, 2, 3, 1)
  v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
  bias = None if bias_BNLS is None else _grouped_bias(bias_BNLS, kv_heads)
  outs, exps, sums = [], [], []
  for start, end in _spans(edges):
    scores_bkgls = jnp.einsum('bkglh,bkhs->bkgls',
                              q_BKGLH[:, :, :, start:end], k_BKHS[..., :end],
                              preferred_element_type=jnp.float32) * scale
    if bias is not None:
      scores_bkgls += bias[..., start:end, :end].astype(jnp.float32)
    scores_bkgls = scores.mask(scores_bkgls,
                               allowed_BLS[:, None, None, start:end, :end])
    exp = jnp.exp(scores_bkgls - scores_bkgls.max(-1, keepdims=True))
    total = exp.sum(-1, keepdims=True)
    out = jnp.einsum('bkgls,bksh->bkglh', exp.astype(v_BKSH.dtype),
                     v_BKSH[:, :, :end], preferred_element_type=jnp.float32)
    outs.append((out / total).astype(q_BLNH.dtype))
    exps.append(exp)
    sums.append(total)
  out_BKGLH = jnp.concatenate(outs, axis=3)
  out_BLNH = out_BKGLH.transpose(0, 3, 1, 2, 4).reshape(q_BLNH.shape)
  residuals = (q_BKGLH, k_BKHS, v_BKSH, out_BKGLH, tuple(exps), tuple(sums),
               bias_BNLS, allowed_BLS)
  return out_BLNH, residuals


def _backward(scale, edges, residuals, d_out_BLNH):
  (q_BKGLH, k_BKHS, v_BKSH, out_BKGLH, exps, sums, bias_BNLS,
   allowed_BLS) = residuals
  b, kv_heads, groups, length, width = q_BKGLH.shape
  source_len = k_BKHS.shape[-1]
  dtype = q_BKGLH.dtype
  d_out = d_out_BLNH.reshape(b, length, kv_heads, groups, width).transpose(
      0, 2, 3, 1, 4)
  # dScores = P * (dP - D) with D = rowsum(dP * P) = rowsum(dO * O).
  d_rows = jnp.sum(d_out.astype(jnp.float32) * out_BKGLH.astype(jnp.float32),
                   -1, keepdims=True)
  q_BKGHL = q_BKGLH.swapaxes(-1, -2)
  d_q, d_scores = [], []
  d_k_BKHS = jnp.zeros((b, kv_heads, width, source_len), jnp.float32)
  d_v_BKHS = jnp.zeros((b, kv_heads, width, source_len), jnp.float32)
  for (start, end), exp, total in zip(_spans(edges), exps, sums):
    # P = exp / total: dividing dO's rows is cheaper than P's.
    d_out_scaled = (d_out[:, :, :, start:end] / total).astype(dtype)
    d_probs = jnp.einsum('bkglh,bksh->bkgls', d_out_scaled,
                         v_BKSH[:, :, :end],
                         preferred_element_type=jnp.float32)
    # Masked scores get no gradient, also in a row that sees no key (whose
    # weights are uniform, not zero).
    d_score = jnp.where(allowed_BLS[:, None, None, start:end, :end],
                        exp * (d_probs - d_rows[:, :, :, start:end] / total),
                        0)
    if bias_BNLS is not None:
      d_scores.append(d_score)
    d_score_scaled = (d_score * scale).astype(dtype)
    d_q.append(jnp.einsum('bkgls,bkhs->bkglh', d_score_scaled,
                          k_BKHS[..., :end],
                          preferred_element_type=jnp.float32))
    d_k_BKHS = d_k_BKHS.at[..., :end].add(jnp.einsum(
        'bkghl,bkgls->bkhs', q_BKGHL[..., start:end], d_score_scaled,
        preferred_element_type=jnp.float32))
    d_v_BKHS = d_v_BKHS.at[..., :end].add(jnp.einsum(
        'bkglh,bkgls->bkhs', d_out_scaled, exp.astype(dtype),
        preferred_element_type=jnp.float32))
  d_q_BLNH = jnp.concatenate(d_q, axis=3).transpose(0, 3, 1, 2, 4).reshape(
      b, length, kv_heads * groups, width).astype(dtype)
  d_k = d_k_BKHS.transpose(0, 3, 1, 2).astype(dtype)
  d_v = d_v_BKHS.transpose(0, 3, 1, 2).astype(dtype)
  d_bias = None
  if bias_BNLS is not None:
    rows = [jnp.pad(d, [(0, 0)] * 4 + [(0, source_len - d.shape[-1])])
            for d in d_scores]
    d_bias = jnp.concatenate(rows, axis=3)
    if bias_BNLS.shape[0] != b:  # Broadcast over the batch.
      d_bias = d_bias.sum(0, keepdims=True)
    d_bias = d_bias.reshape(bias_BNLS.shape).astype(bias_BNLS.dtype)
  return d_q_BLNH, d_k, d_v, d_bias, None


_blocked.defvjp(_forward, _backward)
