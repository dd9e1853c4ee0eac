"""Blockwise attention: the values and gradients of jax.nn's, in linear memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.kernels.blockwise_attention import blockwise_attention
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig

_SMALL = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=2, d_ff=64, max_len=64)


def _reference(q, k, v, positions, causal, mask, bias):
  allowed = positions[:, None, :] <= positions[:, :, None] if causal else None
  if mask is not None:
    allowed = mask if allowed is None else allowed & mask
  return jax.nn.dot_product_attention(
      q, k, v, bias=bias, mask=None if allowed is None else allowed[:, None])


@pytest.mark.slow
@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('with_mask_and_bias', [False, True])
def test_values_and_gradients_equal_dot_product_attention(causal,
                                                          with_mask_and_bias):
  # 37 is no multiple of the block: the last blocks are padded.
  batch, length, heads, kv_heads, width = 2, 37, 4, 2, 8
  keys = jax.random.split(jax.random.key(0), 5)
  q = jax.random.normal(keys[0], (batch, length, heads, width))
  k = jax.random.normal(keys[1], (batch, length, kv_heads, width))
  v = jax.random.normal(keys[2], (batch, length, kv_heads, width))
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  mask = bias = None
  if with_mask_and_bias:
    mask = (jax.random.bernoulli(keys[3], 0.7, (batch, length, length))
            | jnp.eye(length, dtype=bool))
    bias = jax.random.normal(keys[4], (batch, heads, length, length))

  def blockwise(q, k, v):
    return blockwise_attention(q, k, v, positions, positions, causal=causal,
                               mask_BLS=mask, bias_BNLS=bias, block=8)

  def reference(q, k, v):
    return _reference(q, k, v, positions, causal, mask, bias)

  np.testing.assert_allclose(jax.jit(blockwise)(q, k, v),
                             jax.jit(reference)(q, k, v), atol=2e-6)
  square = lambda f: lambda *a: jnp.sum(f(*a) ** 2)
  got = jax.jit(jax.grad(square(blockwise), argnums=(0, 1, 2)))(q, k, v)
  expected = jax.jit(jax.grad(square(reference), argnums=(0, 1, 2)))(q, k, v)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, atol=5e-5)


@pytest.mark.parametrize('family,extra', [
    ('decoder', {}),
    # Relative position biases, padding masks and cross-attention.
    ('encoder_decoder', dict(position='relative', norm='rmsnorm')),
])
@pytest.mark.slow
def test_models_compute_the_same_logits_in_blocks(family, extra):
  config = ModelConfig(family=family, **_SMALL, **extra)
  model = registry.build_model(config)
  blocked = registry.build_model(ModelConfig(
      family=family, attention='blockwise', attention_block=8, **_SMALL,
      **extra))
  params = model_params.init_params(model, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 21), 1, 64)
  tokens = tokens.at[1, 15:].set(0)  # Padding in the encoder's input.
  inputs = model_params.model_inputs(model, {'inputs': tokens,
                                       'encoder_inputs': tokens})
  np.testing.assert_allclose(
      jax.jit(blocked.apply)({'params': params}, **inputs),
      jax.jit(model.apply)({'params': params}, **inputs), atol=1e-5)


def _train_step_temp_bytes(attention: str, seq_len: int) -> int:
  config = ModelConfig(**{**_SMALL, 'num_layers': 1,
                                 'max_len': seq_len}, attention=attention,
                              attention_block=64)
  model = registry.build_model(config)
  params = model_params.abstract_params(model)
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  step = jax.jit(jax.grad(lambda p, t: model.apply({'params': p}, t).sum()))
  return step.lower(params, tokens).compile().memory_analysis(
      ).temp_size_in_bytes


@pytest.mark.slow
def test_blockwise_memory_grows_linearly_with_length():
  # Doubling the length: the [L, L] scores of every head make the fused
  # step's temporaries about 4x; blocks of 64 make them about 2x.
  fused = [_train_step_temp_bytes('xla', n) for n in (512, 1024)]
  blocked = [_train_step_temp_bytes('blockwise', n) for n in (512, 1024)]
  assert fused[1] / fused[0] > 3.0
  assert blocked[1] / blocked[0] < 2.5
  assert blocked[1] < fused[1] / 4
