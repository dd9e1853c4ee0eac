"""Parameter sharing: cross-layer (ALBERT) blocks and factorized embeddings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UsageError
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from tests import decode_test

BASE = ModelConfig(vocab_size=64, d_model=32, num_layers=4,
                          num_heads=4, d_ff=64, position='rotary')


def build(**overrides):
  config = dataclasses.replace(BASE, **overrides)
  config.validate()
  model = registry.build_model(config)
  return model, model_params.init_params(model, jax.random.key(0))


@pytest.mark.slow
@pytest.mark.parametrize('groups', [1, 2])
def test_shared_blocks_compute_what_copies_of_them_do(groups):
  shared, shared_params = build(share_layers=groups)
  assert sorted(k for k in shared_params if k.startswith('block_')) == [
      f'block_{g}' for g in range(groups)]
  plain, plain_params = build()
  # Layer i of the plain model gets the block that serves it.
  copied = dict(plain_params)
  for i in range(4):
    copied[f'block_{i}'] = shared_params[f'block_{i * groups // 4}']
  for name in ('embed', 'final_norm'):
    copied[name] = shared_params[name]
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
  np.testing.assert_allclose(
      shared.apply({'params': shared_params}, tokens),
      plain.apply({'params': copied}, tokens), atol=1e-5)
  assert model_params.count_params(shared_params) < model_params.count_params(
      plain_params)


@pytest.mark.slow
def test_shared_blocks_keep_one_kv_cache_per_layer():
  decode_test.assert_greedy_decoding_matches_full_forward(
      *build(share_layers=1), steps=5)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['decoder', 'encoder', 'encoder_decoder'])
def test_factorized_embeddings_are_smaller_and_run(family):
  model, params = build(family=family, embed_dim=8, share_layers=2,
                        position='sinusoidal')
  assert params['embed']['embedding'].shape == (64, 8)
  assert params['embed']['projection'].shape == (8, 32)
  tokens = jnp.ones((2, 5), jnp.int32)
  inputs = (tokens, tokens) if family == 'encoder_decoder' else (tokens,)
  assert model.apply({'params': params}, *inputs).shape == (2, 5, 64)


@pytest.mark.parametrize('overrides, match', [
    (dict(share_layers=3), 'not a multiple of model.share_layers=3'),
    (dict(share_layers=2, scan_layers=True), 'does not combine'),
    (dict(embed_dim=64), 'embed_dim=64 must be in'),
])
def test_bad_sharing_settings_are_refused(overrides, match):
  with pytest.raises(UsageError, match=match):
    dataclasses.replace(BASE, **overrides).validate()
