"""Mixture of experts: routing, capacity, auxiliary losses, training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UsageError
from lm.model import moe
from lm.model.config import ModelConfig
from lm.train.trainer import Trainer


def _layer(**kwargs):
  settings = dict(num_experts=4, experts_per_token=2, capacity_factor=8.0,
                  d_ff=16, activation='gelu', init_std=0.5, out_init_std=0.5)
  settings.update(kwargs)
  return moe.MoeMlp(**settings)


def _apply(layer, x_BLD):
  params = layer.init(jax.random.key(0), x_BLD)['params']
  y_BLD, aux = layer.apply({'params': nn.unbox(params)}, x_BLD,
                           mutable=['aux'])
  return nn.unbox(params), y_BLD, aux['aux']


@pytest.mark.slow
def test_each_token_mixes_its_top_experts_by_renormalized_router_weights():
  x_BLD = jax.random.normal(jax.random.key(1), (2, 5, 8))
  layer = _layer()
  params, y_BLD, _ = _apply(layer, x_BLD)
  for b in range(2):
    for t in range(5):
      x = x_BLD[b, t]
      probs = jax.nn.softmax(x @ params['router'])
      top = np.argsort(-np.asarray(probs))[:2]
      gates = probs[top] / probs[top].sum()
      expected = sum(
          g * jax.nn.gelu(x @ params['wi'][e]) @ params['wo'][e]
          for g, e in zip(gates, top))
      np.testing.assert_allclose(y_BLD[b, t], expected, rtol=1e-4,
                                 atol=1e-5)


@pytest.mark.slow
def test_tokens_past_an_experts_capacity_skip_it():
  # One expert per token and room for one token per expert: of each
  # sequence's tokens, only the first to reach each expert gets an output.
  x_BLD = jax.random.normal(jax.random.key(2), (3, 12, 8))
  layer = _layer(experts_per_token=1, capacity_factor=4 / 12)
  assert layer.capacity(12) == 1
  params, y_BLD, aux = _apply(layer, x_BLD)
  chosen_BL = np.argmax(np.asarray(x_BLD @ params['router']), axis=-1)
  for b in range(3):
    served = np.abs(np.asarray(y_BLD[b])).sum(-1) > 0
    first = [list(chosen_BL[b]).index(e) for e in set(chosen_BL[b])]
    assert sorted(np.flatnonzero(served)) == sorted(first)
  # The load counts every assignment, before capacity: it sums to one.
  np.testing.assert_allclose(np.sum(aux['expert_load'][0]), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_balanced_routing_has_load_balancing_loss_one():
  x_BLD = jax.random.normal(jax.random.key(3), (2, 6, 8))
  layer = _layer(aux_loss_weight=1.0, z_loss_weight=0.0)
  params = nn.unbox(layer.init(jax.random.key(0), x_BLD)['params'])
  params['router'] = jnp.zeros_like(params['router'])  # uniform probs
  _, aux = layer.apply({'params': params}, x_BLD, mutable=['aux'])
  np.testing.assert_allclose(aux['aux']['router_loss'][0], 1.0, rtol=1e-6)


@pytest.mark.slow
def test_moe_model_trains_with_falling_loss_and_reports_expert_load(tiny):
  tiny.model.update(num_experts=4, experts_per_token=2, moe_every=2)
  tiny.train.update(num_steps=30)
  trainer = Trainer(tiny)
  params = trainer.init_state().params
  assert 'moe' in params['block_1'] and 'mlp' in params['block_0']
  state, batches = trainer.init_state(), iter(
      trainer.data.train.to_iter_dataset())
  losses = []
  for _ in range(30):
    state, step_metrics = trainer.train_step(state, next(batches))
    losses.append(float(step_metrics['loss']))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
  assert 1.0 <= float(step_metrics['expert_load_max']) <= 4.0
  assert float(step_metrics['router_loss']) > 0


def test_bad_expert_settings_are_refused():
  with pytest.raises(UsageError, match='experts_per_token=3'):
    ModelConfig(num_experts=2, experts_per_token=3).validate()
  with pytest.raises(UsageError, match='num_experts must be 0'):
    ModelConfig(num_experts=1).validate()
