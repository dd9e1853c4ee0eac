"""The decoder-only model: shapes, causality, logical axes, config checks."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UsageError
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig

TINY = dict(vocab_size=50, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            max_len=16)
VARIANTS = {
    'gpt2': dict(),
    'llama_gqa': dict(norm='rmsnorm', activation='silu', gated_mlp=True,
                      position='rotary', num_kv_heads=2, use_bias=False,
                      tie_embeddings=False),
    'mqa_post_ln_sinusoidal': dict(norm_position='post', position='sinusoidal',
                                   num_kv_heads=1, activation='relu'),
}


def make(**overrides):
  config = ModelConfig(**{**TINY, **overrides})
  config.validate()
  model = registry.build_model(config)
  return model, model_params.init_params(model, jax.random.PRNGKey(0))


class TestShapes(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_logits_have_one_row_per_token(self):
    model, params = make()
    tokens = jnp.ones((3, 7), jnp.int32)
    logits = self.variant(lambda p, t: model.apply({'params': p}, t))(
        params, tokens)
    chex.assert_shape(logits, (3, 7, TINY['vocab_size']))
    chex.assert_tree_all_finite(logits)


@pytest.mark.slow
@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_output_at_t_does_not_depend_on_inputs_after_t(variant):
  model, params = make(**VARIANTS[variant])
  tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 8), 0, 50)
  perturbations = model.init(jax.random.PRNGKey(0), tokens)['perturbations']
  t = 3

  def logits_at_t(perturbations):
    logits = model.apply({'params': params, 'perturbations': perturbations},
                         tokens)
    return jnp.sum(logits[0, t])

  grad = jax.grad(logits_at_t)(perturbations)['embedded'][0]  # [L, D]
  norms = np.asarray(jnp.linalg.norm(grad, axis=-1))
  assert np.all(norms[t + 1:] == 0), norms
  assert np.all(norms[:t + 1] > 0), norms


@pytest.mark.slow
@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_every_parameter_has_one_logical_axis_per_dimension(variant):
  config = ModelConfig(**{**TINY, **VARIANTS[variant]})
  boxed = registry.build_model(config).init(
      jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(
      x, nn.Partitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert all(isinstance(name, str) for name in leaf.names)


def test_gqa_has_fewer_key_value_parameters():
  _, mha = make()
  _, gqa = make(num_kv_heads=2)
  _, mqa = make(num_kv_heads=1)
  kernel = lambda p: p['block_0']['attention']['key']['kernel'].shape
  assert kernel(mha) == (32, 4, 8)
  assert kernel(gqa) == (32, 2, 8)
  assert kernel(mqa) == (32, 1, 8)


def test_tied_model_has_no_separate_head():
  _, tied = make()
  _, untied = make(tie_embeddings=False)
  assert 'head' not in tied and 'head' in untied


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
  model, params = make(dtype='bfloat16')
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = model.apply({'params': params}, jnp.ones((1, 4), jnp.int32))
  assert logits.dtype == jnp.float32  # Loss is computed in float32.


def test_dropout_changes_training_output_only():
  model, params = make(dropout_rate=0.5)
  tokens = jnp.ones((2, 6), jnp.int32)
  eval_a = model.apply({'params': params}, tokens)
  eval_b = model.apply({'params': params}, tokens)
  train = model.apply({'params': params}, tokens, deterministic=False,
                      rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train)


@pytest.mark.parametrize('overrides, message', [
    (dict(d_model=30), 'not divisible'),
    (dict(num_kv_heads=3), 'not a multiple'),
    (dict(norm='batchnorm'), 'model.norm'),
    (dict(dropout_rate=1.5), 'dropout_rate'),
])
def test_bad_model_config_is_one_clear_error(overrides, message):
  with pytest.raises(UsageError, match=message):
    ModelConfig.from_config({**TINY, **overrides})


def test_unknown_model_key_is_named():
  with pytest.raises(UsageError, match='num_layer'):
    ModelConfig.from_config({**TINY, 'num_layer': 3})


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['llama_gqa', 't5_decoder'])
def test_causal_query_blocks_equal_whole_attention(variant):
  # 200 tokens go in 3 query blocks (of 64 queries at least: 66, 67, 67),
  # each reading the keys up to its end; positions passed explicitly could
  # be in any order, so with them attention stays whole: the reference.
  length = 200
  overrides = dict(VARIANTS.get(variant, dict(
      position='relative', norm='rmsnorm', use_bias=False,
      scale_queries=False)), max_len=length)
  model, params = make(**overrides)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, length), 0, 50)
  positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)

  def loss(params, positions):
    return jnp.sum(jnp.sin(model.apply({'params': params}, tokens,
                                       positions)))

  blocks_jaxpr = str(jax.make_jaxpr(loss)(params, None))
  assert ',67,133]' in blocks_jaxpr  # Scores of block 2: 133 keys.
  assert ',67,133]' not in str(jax.make_jaxpr(loss)(params, positions))
  (blocks, d_blocks), (whole, d_whole) = (
      jax.jit(jax.value_and_grad(loss))(params, p) for p in (None, positions))
  np.testing.assert_allclose(blocks, whole, rtol=1e-5)
  # Gradients reach ~50 here; float32 sums in another order differ by ~1e-5
  # at entries near zero, hence an absolute tolerance of 1e-4.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-4),
               d_blocks, d_whole)
