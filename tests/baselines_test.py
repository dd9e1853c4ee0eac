"""The Kneser-Ney baseline: a proper distribution that beats lower orders."""

import numpy as np
import pytest

from lm.baselines import ngram


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
