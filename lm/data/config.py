"""The `data` section of a config, checked once before any data is read."""

import dataclasses
import os

from lm import sections
from lm.data.augment import AugmentConfig
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


@dataclasses.dataclass(frozen=True)
class DataConfig(sections.Section):
  """What a run reads (lm/data/build.py): a dataset, its tokenizer, the
  batches, and the objective that turns text into examples."""

  NAME = 'data'
  name: str = 'shakespeare'  # one of the datasets lm/data/datasets.py builds
  data_dir: str = ''  # '' means the tfds default (~/tensorflow_datasets)
  # 'sentencepiece', 'byte', or a directory holding a tokenizer
  tokenizer: str = 'sentencepiece'
  vocab_size: int = 2048  # SentencePiece vocabulary trained on the train split
  seq_len: int = 256  # tokens per example (the encoder's, for seq2seq)
  batch_size: int = 32  # examples per train step, over every device
  eval_batch_size: int = 32
  shuffle_seed: int = 0  # the order of train examples and their corruption
  # lm/data/objectives.py: 'causal' (decoder), 'masked' (encoder) or 'span'
  # (encoder_decoder), with their corruption rates; or 'classify'
  # (lm/data/classification.py) for a labelled dataset; or 'seq2seq'
  # (encoder_decoder) / 'instruct' (decoder) for a dataset of text pairs
  # (lm/data/text_pairs.py), whose targets have up to target_len tokens
  # (0: seq_len) and whose decoder prompt is `prompt`.
  objective: str = 'causal'
  mask_rate: float = 0.15
  noise_density: float = 0.15
  mean_span_length: float = 3.0
  target_len: int = 0
  prompt: str = '{source}\n'
  # Training-time augmentation of classification text, rates in [0, 1)
  # (lm/data/augment.py); 0 turns an operation off.
  augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

  def validate(self) -> None:
    """Raises UsageError naming the key that is wrong and the fix."""
    if self.name not in DATASETS:
      raise UsageError(f'unknown dataset {self.name!r} (data.name); '
                       f'known: {sorted(DATASETS)}')
    if self.tokenizer not in ('byte', 'sentencepiece') and not os.path.isdir(
        self.tokenizer):
      raise UsageError(f"data.tokenizer={self.tokenizer!r} is not 'byte', "
                       "'sentencepiece' or a directory holding a tokenizer")
    if self.objective not in OBJECTIVES:
      raise UsageError(f'data.objective={self.objective!r} is not one '
                       f'of {list(OBJECTIVES)}')
    self.require(('seq_len', 'batch_size', 'eval_batch_size', 'vocab_size'),
                 1)
    objectives.check_settings(self)
    if self.objective in TEXT_PAIR_OBJECTIVES:
      target_len(self)


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
