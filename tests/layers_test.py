"""Building blocks: rotary and sinusoidal positions, feed-forward, attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import attention
from lm.model import layers
from lm.model import positions


def test_rotary_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 16))

  def score(q_pos, k_pos):
    rq = positions.apply_rotary(q, jnp.array([[q_pos]]), 10_000.0)
    rk = positions.apply_rotary(k, jnp.array([[k_pos]]), 10_000.0)
    return float(jnp.sum(rq * rk))

  np.testing.assert_allclose(score(5, 2), score(13, 10), rtol=1e-5)
  assert abs(score(5, 2) - score(5, 4)) > 1e-4


def test_rotary_keeps_vector_norms():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3, 8))
  positions_BL = jnp.broadcast_to(jnp.arange(5), (2, 5))
  rotated = positions.apply_rotary(x, positions_BL, 10_000.0)
  np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_sinusoidal_positions_start_with_sin0_cos0():
  table = positions.sinusoidal_positions(jnp.arange(4)[None], 6, jnp.float32)
  assert table.shape == (1, 4, 6)
  np.testing.assert_allclose(table[0, 0], [0, 0, 0, 1, 1, 1])


def test_swiglu_has_gate_and_up_projections():
  mlp = layers.Mlp(d_ff=12, activation='silu', gated=True, use_bias=False)
  params = mlp.init(jax.random.PRNGKey(0), jnp.ones((1, 2, 4)))['params']
  assert set(params) == {'wi_0', 'wi_1', 'wo'}
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 4))
  p = jax.tree.map(lambda b: b.value, params,
                   is_leaf=lambda b: hasattr(b, 'value'))
  expected = (jax.nn.silu(x @ p['wi_0']['kernel']) * (x @ p['wi_1']['kernel'])
              ) @ p['wo']['kernel']
  np.testing.assert_allclose(mlp.apply({'params': params}, x), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_grouped_query_attention_equals_repeated_heads():
  """GQA with K kv heads == MHA whose kv weights repeat each kv head."""
  gqa = attention.Attention(num_heads=4, num_kv_heads=2, head_dim=8,
                         use_bias=False)
  mha = attention.Attention(num_heads=4, num_kv_heads=4, head_dim=8,
                         use_bias=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
  p = jax.tree.map(lambda b: b.value,
                   gqa.init(jax.random.PRNGKey(1), x, positions)['params'],
                   is_leaf=lambda b: hasattr(b, 'value'))
  repeated = dict(p)
  for name in ('key', 'value'):
    repeated[name] = {'kernel': jnp.repeat(p[name]['kernel'], 2, axis=1)}
  np.testing.assert_allclose(
      gqa.apply({'params': p}, x, positions),
      mha.apply({'params': repeated}, x, positions), rtol=1e-5, atol=1e-6)
