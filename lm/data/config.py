"""The `data` section of a config, checked once before any data is read."""

import os

from lm.data import augment
from lm.data import objectives
from lm.errors import UsageError

# Every data.name: the corpora lm/data/datasets.py builds (checked here
# without importing tensorflow-datasets, which runs that need no data lack).
DATASETS = ('shakespeare', 'tweet_sentiment', 'wordnet_topics', 'bible_en_es',
            'docstring_summaries', 'country_qa')
# Text-to-text objectives (lm/data/text_pairs.py): 'seq2seq' trains an
# encoder-decoder, 'instruct' a decoder.
TEXT_PAIR_OBJECTIVES = ('seq2seq', 'instruct')
# Every data.objective: pretraining objectives, classification of labelled
# text, and text-to-text pairs.
OBJECTIVES = objectives.OBJECTIVES + ('classify',) + TEXT_PAIR_OBJECTIVES


def validate(data_config) -> None:
  """Raises UsageError naming the key that is wrong and the fix."""
  if data_config.name not in DATASETS:
    raise UsageError(f'unknown dataset {data_config.name!r} (data.name); '
                     f'known: {sorted(DATASETS)}')
  tokenizer = data_config.tokenizer
  if tokenizer not in ('byte', 'sentencepiece') and not os.path.isdir(
      tokenizer):
    raise UsageError(f"data.tokenizer={tokenizer!r} is not 'byte', "
                     "'sentencepiece' or a directory holding a tokenizer")
  if data_config.objective not in OBJECTIVES:
    raise UsageError(f'data.objective={data_config.objective!r} is not one '
                     f'of {list(OBJECTIVES)}')
  for key in ('seq_len', 'batch_size', 'eval_batch_size', 'vocab_size'):
    if data_config[key] <= 0:
      raise UsageError(f'data.{key} must be positive, got {data_config[key]}')
  objectives.check_settings(data_config)
  augment.check_rates(data_config.augment)
  if data_config.objective in TEXT_PAIR_OBJECTIVES:
    target_len(data_config)


def longest_sequence(data_config) -> int:
  """The most tokens one example puts in front of the model."""
  return max(data_config.seq_len, data_config.target_len)


def target_len(data_config) -> int:
  """A text-to-text task's target length in tokens (data.target_len, or
  seq_len if 0), after checking that the lengths and prompt fit."""
  length = data_config.target_len or data_config.seq_len
  if data_config.seq_len < 2 or length < 2:
    raise UsageError('text-to-text tasks need data.seq_len and '
                     f'data.target_len >= 2, got {data_config.seq_len} and '
                     f'{length}')
  if data_config.objective == 'instruct' and length >= data_config.seq_len:
    raise UsageError(
        f'data.target_len={length} leaves no room for the prompt in '
        f'data.seq_len={data_config.seq_len}; make target_len smaller')
  if '{source}' not in data_config.prompt:
    raise UsageError(f'data.prompt={data_config.prompt!r} must contain '
                     "'{source}', where the source text goes")
  return length
