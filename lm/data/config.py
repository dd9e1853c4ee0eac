"""The `data` section of a config, checked once before any data is read."""

import os

from lm.data import augment
from lm.data import datasets
from lm.data import objectives
from lm.data import text_pairs
from lm.errors import UsageError

# Every data.objective: pretraining objectives, classification of labelled
# text, and text-to-text pairs.
OBJECTIVES = objectives.OBJECTIVES + ('classify',) + text_pairs.OBJECTIVES


def validate(data_config) -> None:
  """Raises UsageError naming the key that is wrong and the fix."""
  if data_config.name not in datasets.BUILDERS:
    raise UsageError(f'unknown dataset {data_config.name!r} (data.name); '
                     f'known: {sorted(datasets.BUILDERS)}')
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
  if data_config.objective in text_pairs.OBJECTIVES:
    text_pairs.check_lengths(data_config)


def longest_sequence(data_config) -> int:
  """The most tokens one example puts in front of the model."""
  return max(data_config.seq_len, data_config.target_len)
