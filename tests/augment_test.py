"""Augmentation of classification text: each operation, and the pipeline."""

import ml_collections
import numpy as np
import pytest

from lm.data import augment
from lm.data import build
from lm.data import config as data_config
from lm.data import tokenizers
from lm.errors import UsageError

TEXT = 'the happy dog ran to the big red house today'


def augmenter(**rates):
  config = ml_collections.ConfigDict({name: rates.get(name, 0.0)
                                      for name in augment.RATES})
  return augment.Augmenter.from_config(
      config, synonyms_fn=lambda: {'happy': ('glad',), 'dog': ('hound',)})


def test_off_by_default_changes_nothing():
  a = augmenter()
  assert not a.enabled
  rng = np.random.default_rng(0)
  assert a.text(TEXT, rng) == TEXT
  assert a.tokens([1, 5, 6, 2], tokenizers.ByteTokenizer(), rng) == [1, 5, 6, 2]


def test_synonyms_replace_words_and_keep_punctuation():
  out = augmenter(synonym=0.999).text('A happy, happy dog!', np.random.default_rng(0))
  assert out == 'A glad, glad hound!'


def test_deletion_drops_about_the_rate_and_keeps_one_word():
  a, rng = augmenter(delete=0.3), np.random.default_rng(0)
  lengths = [len(a.text(TEXT, rng).split()) for _ in range(2000)]
  assert abs(1 - np.mean(lengths) / len(TEXT.split()) - 0.3) < 0.02
  assert augmenter(delete=0.99).text('one two', rng) in ('one', 'two')


def test_swaps_reorder_the_same_words():
  out = augmenter(swap=0.2).text(TEXT, np.random.default_rng(1))
  assert out != TEXT and sorted(out.split()) == sorted(TEXT.split())


def test_token_mask_spares_bos_and_eos():
  tokenizer = tokenizers.ByteTokenizer()
  ids = [tokenizer.bos_id] + list(range(10, 1010)) + [tokenizer.eos_id]
  out = augmenter(token_mask=0.25).tokens(ids, tokenizer,
                                          np.random.default_rng(0))
  assert out[0] == tokenizer.bos_id and out[-1] == tokenizer.eos_id
  masked = np.mean([t == tokenizer.pad_id for t in out[1:-1]])
  assert abs(masked - 0.25) < 0.04


def test_rates_outside_zero_one_are_refused(tiny):
  tiny.data.augment.swap = 1.5
  with pytest.raises(UsageError, match=r'data.augment.swap must be in \[0, 1\)'):
    data_config.DataConfig.from_config(tiny.data)


def test_pipeline_augments_training_only_and_reproducibly(tiny):
  tiny.data.update(name='tweet_sentiment', objective='classify', seq_len=48,
                   batch_size=16, eval_batch_size=256)
  plain = build.make(tiny.data, build.tokenizer(tiny.data))
  tiny.data.augment.update(delete=0.3, token_mask=0.1)
  augmented = build.make(tiny.data, build.tokenizer(tiny.data))
  again = build.make(tiny.data, build.tokenizer(tiny.data))
  assert augmented.train_examples == plain.train_examples
  first = augmented.train[0]
  assert not np.array_equal(first['inputs'], plain.train[0]['inputs'])
  np.testing.assert_array_equal(first['inputs'], again.train[0]['inputs'])
  np.testing.assert_array_equal(first['label'], plain.train[0]['label'])
  np.testing.assert_array_equal(augmented.evaluation['validation'][0]['inputs'],
                                plain.evaluation['validation'][0]['inputs'])
