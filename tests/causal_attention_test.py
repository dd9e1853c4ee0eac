"""Causal attention in query blocks with its own backward pass, against
`jax.nn.dot_product_attention` over the whole sequence and its autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.kernels import causal_attention

BATCH, LENGTH, HEADS, WIDTH = 2, 200, 6, 16


def _inputs(kv_heads, bias_batch, dtype=jnp.float32):
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  q = jax.random.normal(keys[0], (BATCH, LENGTH, HEADS, WIDTH), dtype)
  k, v = (jax.random.normal(key, (BATCH, LENGTH, kv_heads, WIDTH), dtype)
          for key in keys[1:3])
  d_out = jax.random.normal(keys[3], q.shape, jnp.float32)
  bias = None
  if bias_batch:
    bias = jax.random.normal(keys[4], (bias_batch, HEADS, LENGTH, LENGTH),
                             dtype)
  return q, k, v, bias, d_out


def _causal(padding_from=None):
  allowed = jnp.tril(jnp.ones((LENGTH, LENGTH), bool))[None].repeat(BATCH, 0)
  if padding_from is not None:  # Row 1's keys from there on are padding.
    allowed = allowed.at[1, :, padding_from:].set(False)
  return allowed


def _loss_and_gradients(attention, q, k, v, bias, d_out):
  def loss(q, k, v, bias):
    return jnp.sum(attention(q, k, v, bias).astype(jnp.float32) * d_out)

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  return jax.jit(jax.value_and_grad(loss, argnums))(q, k, v, bias)


def test_query_blocks_are_at_least_64_queries_and_at_most_4():
  assert causal_attention.query_block_edges(100) == [0, 100]
  assert causal_attention.query_block_edges(200) == [0, 66, 133, 200]
  assert causal_attention.query_block_edges(2048) == [0, 512, 1024, 1536,
                                                      2048]


@pytest.mark.parametrize('kv_heads, bias_batch, padding_from', [
    (6, 0, None),  # GPT-2: one key/value head per query head.
    (2, 1, None),  # GQA with T5's relative bias, shared by the batch.
    (3, BATCH, 150),  # A bias per row, and padded keys.
])
@pytest.mark.slow
def test_blocks_equal_whole_attention_and_its_gradients(
    kv_heads, bias_batch, padding_from):
  q, k, v, bias, d_out = _inputs(kv_heads, bias_batch)
  allowed = _causal(padding_from)
  blocks = _loss_and_gradients(
      lambda q, k, v, bias: causal_attention.causal_attention(
          q, k, v, bias, allowed, None), q, k, v, bias, d_out)
  whole = _loss_and_gradients(
      lambda q, k, v, bias: jax.nn.dot_product_attention(
          q, k, v, bias=bias, mask=allowed[:, None]), q, k, v, bias, d_out)
  np.testing.assert_allclose(blocks[0], whole[0], rtol=1e-5)
  for name, got, want in zip('qkvb', blocks[1], whole[1]):
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f'd{name}')


def test_a_row_that_sees_no_key_is_finite_and_passes_no_gradient_to_bias():
  q, k, v, bias, d_out = _inputs(6, 1)
  allowed = _causal().at[0, :10].set(False)  # Row 0's first 10 queries.

  out, (d_q, d_k, d_v, d_bias) = _loss_and_gradients(
      lambda q, k, v, bias: causal_attention.causal_attention(
          q, k, v, bias, allowed, None), q, k, v, bias, d_out)
  assert all(np.isfinite(x).all() for x in (out, d_q, d_k, d_v, d_bias))
  # The masked scores' bias gets nothing (row 0's masked entries, and row
  # 1's upper triangle, which the shared bias sees in both rows).
  np.testing.assert_array_equal(d_bias[0][:, ~allowed[0] & ~allowed[1]], 0)
  np.testing.assert_array_equal(d_q[0, :10], 0)


def test_bfloat16_stays_within_its_precision_of_float32():
  q, k, v, _, d_out = _inputs(2, 0)
  allowed = _causal()

  def run(dtype):
    return _loss_and_gradients(
        lambda q, k, v, bias: causal_attention.causal_attention(
            q, k, v, bias, allowed, None),
        *(x.astype(dtype) for x in (q, k, v)), None, d_out)

  half, full = run(jnp.bfloat16), run(jnp.float32)
  for got, want in zip(half[1], full[1]):
    assert got.dtype == jnp.bfloat16
    scale = np.abs(np.asarray(want)).max()
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               atol=0.03 * scale)
