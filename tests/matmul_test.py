"""The hand-laid-out products equal the plain ones: the dense product and its
autodiff, and the tied output layer's logits."""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.kernels import matmul


# An output narrower than x takes the "tn" weight gradient, a wider one the
# transposed x.
@pytest.mark.slow
@pytest.mark.parametrize('out', [8, 32])
@pytest.mark.parametrize('shape, dtype', [((6, 16), jnp.float32),
                                          ((2, 3, 16), jnp.float32),
                                          ((2, 3, 16), jnp.bfloat16)])
def test_value_and_gradients_equal_autodiff(shape, dtype, out):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], shape, dtype)
  kernel = jax.random.normal(keys[1], (16, out), dtype)
  d_y = jax.random.normal(keys[2], shape[:-1] + (out,), jnp.float32)

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


def _weight_gradient_text(n_in, n_out):
  x, kernel = jnp.ones((32, n_in)), jnp.ones((n_in, n_out))
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(matmul.dense(x, k)), 1))
  return grad.lower(x, kernel).as_text()


def test_a_narrow_x_is_transposed_behind_a_barrier():
  assert 'optimization_barrier' in _weight_gradient_text(16, 32)


def test_a_wide_x_is_contracted_over_tokens_without_a_transpose():
  text = _weight_gradient_text(32, 16)
  assert 'optimization_barrier' not in text
  assert 'contracting_dims = [0] x [0]' in text


@pytest.mark.parametrize('length, in_loop', [(3, False), (1, False),
                                             (1, True)])
def test_tied_logits_equal_the_product_with_the_table(length, in_loop):
  # A decoding loop's step takes the [D, V] copy on a CPU; others the table.
  keys = jax.random.split(jax.random.key(1))
  x_BLD = jax.random.normal(keys[0], (2, length, 16))
  table_VD = jax.random.normal(keys[1], (40, 16))
  with matmul.decoding_loop() if in_loop else contextlib.nullcontext():
    got = jax.jit(matmul.tied_logits)(x_BLD, table_VD)
  np.testing.assert_allclose(got, np.asarray(x_BLD) @ np.asarray(table_VD).T,
                             rtol=1e-5, atol=1e-5)


def _computation(text, name):
  start = text.index(f'%{name} (')
  return text[start:text.index('\n}', start)]


def test_a_decoding_loop_reads_a_transposed_table_copied_once_before_it():
  def loop(x_BLD, table_VD):
    def step(_, x_BLD):
      with matmul.decoding_loop():
        return x_BLD + matmul.tied_logits(x_BLD, table_VD)[..., :16]
    return jax.lax.fori_loop(0, 5, step, x_BLD)

  text = jax.jit(loop).lower(jnp.ones((2, 1, 16)),
                             jnp.ones((64, 16))).compile().as_text()
  body = _computation(text, re.search(r' while\(.*body=%([\w.\-]+)',
                                      text).group(1))
  # The loop carries the [D, V] copy and makes none itself.
  made_in_body = [line for line in body.splitlines()[1:]
                  if '= f32[16,64]' in line and 'get-tuple-element(' not in line]
  assert not made_in_body
  assert 'f32[16,64]' in body
