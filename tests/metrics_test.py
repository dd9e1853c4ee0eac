"""Metrics against hand-computed cases and the reference packages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rouge_score import rouge_scorer
import sacrebleu

from lm.evaluate import batch_metrics
from lm.evaluate import text_metrics
from lm.kernels.argmax import argmax

HYPOTHESES = [
    'the cat sat on the mat',
    'a quick brown dog jumps over the lazy fox',
    'He said: "it\'s 3.5 km away!"',
    'nothing in common here',
    'the the the the',
    'short',
]
REFERENCES = [
    'the cat is sitting on the mat',
    'the quick brown fox jumps over the lazy dog',
    'He said, "It is 3.5 km away."',
    'completely different words entirely',
    'the cat',
    'a much longer reference sentence than the hypothesis',
]


def test_classification_report_on_a_hand_computed_case():
  labels = [0, 0, 0, 1, 1, 2]
  predictions = [0, 0, 1, 1, 2, 2]
  report = batch_metrics.classification_report(labels, predictions,
                                         ['neg', 'neu', 'pos'])
  assert report['accuracy'] == pytest.approx(4 / 6)
  assert report['confusion_matrix'] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  # neg: P 2/2 R 2/3; neu: P 1/2 R 1/2; pos: P 1/2 R 1/1.
  f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
  assert report['macro_f1'] == pytest.approx(np.mean(f1))
  assert report['per_class']['neg']['recall'] == pytest.approx(2 / 3)
  assert report['per_class']['pos']['support'] == 1
  assert report['macro_precision'] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_a_class_never_predicted_scores_zero_not_nan():
  report = batch_metrics.classification_report([0, 1], [0, 0], ['a', 'b'])
  assert report['per_class']['b'] == {'precision': 0.0, 'recall': 0.0,
                                      'f1': 0.0, 'support': 1}
  assert report['macro_f1'] == pytest.approx((2 / 3) / 2)


@pytest.mark.parametrize('pairs', [slice(None), slice(0, 2), slice(3, 4),
                                   slice(4, 6)])
def test_bleu_equals_sacrebleu(pairs):
  hyps, refs = HYPOTHESES[pairs], REFERENCES[pairs]
  expected = sacrebleu.corpus_bleu(hyps, [refs]).score
  assert text_metrics.bleu(hyps, refs) == pytest.approx(expected, abs=1e-9)


def test_bleu_of_a_perfect_match_is_100():
  assert text_metrics.bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)


def test_rouge_equals_rouge_score():
  scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'])
  expected = {name: 100 * np.mean([scorer.score(r, h)[name].fmeasure
                                   for h, r in zip(HYPOTHESES, REFERENCES)])
              for name in ('rouge1', 'rouge2', 'rougeL')}
  ours = text_metrics.rouge(HYPOTHESES, REFERENCES)
  for name, value in expected.items():
    assert ours[name] == pytest.approx(value, abs=1e-9), name
  assert 0 < ours['rougeL'] < 100


def test_chrf_rewards_closer_text():
  close = text_metrics.chrf(['the cat sat on the mat'], ['the cat sat on a mat'])
  far = text_metrics.chrf(['dogs bark loudly'], ['the cat sat on a mat'])
  assert 0 <= far < close <= 100


def test_exact_match_and_token_f1_on_hand_computed_cases():
  predictions = ['The Eiffel Tower!', 'in Paris, France', 'blue']
  answers = ['eiffel tower', 'Paris', 'red']
  assert text_metrics.exact_match(predictions, answers) == pytest.approx(100 / 3)
  # 'in paris france' vs 'paris': P 1/3, R 1 -> F1 0.5.
  assert text_metrics.token_f1(predictions, answers) == pytest.approx(
      100 * (1 + 0.5 + 0) / 3)


def test_fast_argmax_equals_jnp_argmax_with_ties_nans_and_infinities():
  logits = jax.random.normal(jax.random.key(0), (6, 50))
  logits = logits.at[1, 7].set(9.0).at[1, 30].set(9.0)   # tie: first wins
  logits = logits.at[2, 11].set(jnp.nan).at[2, 40].set(jnp.nan)
  logits = logits.at[3].set(-jnp.inf)                    # all masked
  logits = logits.at[4, 0].set(jnp.inf).at[4, 49].set(jnp.inf)
  logits = logits.at[5, 49].set(100.0)
  out = jax.jit(argmax)(logits)
  np.testing.assert_array_equal(out, jnp.argmax(logits, axis=-1))
  np.testing.assert_array_equal(out[1:], [7, 11, 0, 0, 49])
  assert out.dtype == jnp.int32
