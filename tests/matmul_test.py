"""The dense product with a hand-laid-out weight gradient equals x @ kernel
and its autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import matmul


@pytest.mark.parametrize('shape, dtype', [((6, 16), jnp.float32),
                                          ((2, 3, 16), jnp.float32),
                                          ((2, 3, 16), jnp.bfloat16)])
def test_value_and_gradients_equal_autodiff(shape, dtype):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], shape, dtype)
  kernel = jax.random.normal(keys[1], (16, 8), dtype)
  d_y = jax.random.normal(keys[2], shape[:-1] + (8,), jnp.float32)

  def loss(product):
    return lambda x, kernel: jnp.sum(product(x, kernel).astype(jnp.float32)
                                     * d_y)

  want = jax.jit(jax.value_and_grad(loss(jnp.matmul), (0, 1)))(x, kernel)
  got = jax.jit(jax.value_and_grad(loss(matmul.dense), (0, 1)))(x, kernel)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), rtol=tolerance,
                               atol=tolerance * 10)


def test_the_weight_gradient_transposes_x_behind_a_barrier():
  x, kernel = jnp.ones((32, 16)), jnp.ones((16, 8))
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(matmul.dense(x, k)), 1))
  text = grad.lower(x, kernel).as_text()
  assert 'optimization_barrier' in text
