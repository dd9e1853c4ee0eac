"""The baselines: Kneser-Ney n-grams (a proper distribution that beats lower
orders) and the LSTM classifier (padding-blind, trained by the same Trainer)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UsageError
from lm.evaluate import ngram
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train import loop
from tests import finetune_test


@pytest.fixture(scope='module')
def stream():
  # A toy language: a fixed 5-token phrase, repeated with noise between.
  rng = np.random.default_rng(0)
  tokens = []
  for _ in range(400):
    tokens += [3, 4, 5, 6, 7] + list(rng.integers(0, 20, 2))
  return np.array(tokens)


@pytest.mark.parametrize('order', [1, 2, 3])
def test_probabilities_sum_to_one_for_any_context(stream, order):
  model = ngram.KneserNey(stream[:2000], order, vocab_size=20)
  for context in [(), (3,), (3, 4), (19, 19), (0, 5)]:
    total = sum(model.prob(context, w) for w in range(20))
    assert total == pytest.approx(1.0, abs=1e-12), context


def test_longer_contexts_predict_held_out_text_better(stream):
  train, held_out = stream[:2100], stream[2100:]
  nll = [ngram.KneserNey(train, n, vocab_size=20).stream_nll(held_out).mean()
         for n in (1, 2, 3)]
  assert nll[2] < nll[1] < nll[0] < np.log(20)


def test_an_unseen_token_keeps_some_probability(stream):
  model = ngram.KneserNey(stream, 3, vocab_size=25)  # ids 20-24 never occur
  assert 0 < model.prob((3, 4), 24) < model.prob((3, 4), 5)


# ------------------------------------------------------------------ LSTM ----


def lstm_model(**overrides):
  config = ModelConfig.from_config({**dict(
      family='lstm', vocab_size=30, d_model=16, num_layers=2, num_classes=3,
      pooling='mean'), **overrides})
  model = registry.build_model(config)
  return model, model_params.init_params(model, jax.random.PRNGKey(0))


@pytest.mark.slow
@pytest.mark.parametrize('pooling, bidirectional', [
    ('mean', True), ('last', True), ('first', True), ('last', False)])
def test_lstm_ignores_right_padding(pooling, bidirectional):
  model, params = lstm_model(pooling=pooling, bidirectional=bidirectional)
  tokens = jnp.array([[5, 6, 7, 8]])
  short = model.apply({'params': params}, tokens, jnp.ones((1, 4), bool))
  padded = model.apply({'params': params},
                       jnp.array([[5, 6, 7, 8, 0, 0, 0]]),
                       jnp.arange(7)[None] < 4)
  np.testing.assert_allclose(padded, short, atol=1e-6)
  # ...but the tokens themselves matter (the first one to the last state).
  changed = model.apply({'params': params}, jnp.array([[9, 6, 7, 8]]),
                        jnp.ones((1, 4), bool))
  assert not np.allclose(changed, short)


def test_a_forward_lstm_has_no_backward_layers():
  _, params = lstm_model(bidirectional=False, pooling='last')
  assert sorted(params) == ['classifier', 'embed', 'forward_0', 'forward_1']
  _, params = lstm_model()  # Two layers, two directions: four cells.
  assert len([k for k in params if k.startswith('OptimizedLSTMCell')]) == 4


def test_lstm_must_be_a_classifier():
  with pytest.raises(UsageError, match='set model.num_classes'):
    lstm_model(num_classes=0)


@pytest.mark.slow
def test_lstm_baseline_trains_through_the_same_harness(tiny, tmp_path):
  config = finetune_test.classifier_config(
      tiny, family='lstm', num_layers=1, pooling='mean')
  config.train.update(num_steps=30, eval_every=30, checkpoint_every=30)
  config.optim.learning_rate = 1e-2
  final = loop.train_and_evaluate(config, str(tmp_path))
  assert final['loss'] < np.log(3)  # better than a uniform guess
  assert 0 < final['macro_f1'] < 1
