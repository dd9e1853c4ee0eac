"""grain pipelines for language modelling: tokenize, pack, shuffle, batch, repeat.

Documents are tokenized and joined end to end, each followed by EOS, then cut
into windows of `seq_len + 1` tokens that overlap by one (the last target of
a window is the first input of the next), so every token is predicted once
per epoch. Windows are shuffled globally, differently each epoch; the
iterator's state is a few integers, saved with every checkpoint.
"""

import dataclasses

import grain
import numpy as np

from lm.data import datasets
from lm.data import tokenizers
from lm.errors import UsageError


@dataclasses.dataclass
class LmData:
  """What training needs from the data: batches, the tokenizer, byte counts."""

  tokenizer: tokenizers.Tokenizer
  train: grain.MapDataset  # infinite, shuffled, batched
  validation: grain.MapDataset  # one pass, batched, last batch padded
  token_bytes: np.ndarray  # [vocab] UTF-8 bytes per token id


def make_lm_data(data_config, *, process_index: int = 0,
                 process_count: int = 1) -> LmData:
  """Builds (offline, cached) the dataset and tokenizer, and the pipelines."""
  if data_config.seq_len <= 0 or data_config.batch_size <= 0:
    raise UsageError('data.seq_len and data.batch_size must be positive, got '
                     f'{data_config.seq_len} and {data_config.batch_size}')
  builder = datasets.get_builder(data_config.name, data_config.data_dir or None)
  tokenizer = datasets.get_tokenizer(data_config.tokenizer, builder,
                                     data_config.vocab_size)
  splits = {}
  for split in ('train', 'validation'):
    tokens = tokenize_and_join(datasets.documents(builder, split), tokenizer)
    windows = Windows(tokens, data_config.seq_len)
    if len(windows) < process_count:
      raise UsageError(f'the {split} split has only {len(tokens)} tokens, '
                       f'too few for data.seq_len={data_config.seq_len}')
    splits[split] = grain.MapDataset.source(windows)[process_index::
                                                     process_count]
  train = (splits['train'].shuffle(data_config.shuffle_seed).repeat()
           .batch(data_config.batch_size, drop_remainder=True)
           .map(to_lm_batch))
  validation = (splits['validation']
                .batch(data_config.eval_batch_size)
                .map(lambda w: to_lm_batch(pad_rows(
                    w, data_config.eval_batch_size))))
  return LmData(tokenizer, train, validation, tokenizer.token_bytes())


def tokenize_and_join(documents, tokenizer: tokenizers.Tokenizer) -> np.ndarray:
  """One int32 stream: each document's tokens followed by EOS."""
  encoded = grain.MapDataset.source(documents).map(
      lambda ex: tokenizer.encode(ex['text'].decode('utf-8'))
      + [tokenizer.eos_id])
  return np.fromiter((t for ids in encoded for t in ids), dtype=np.int32)


class Windows:
  """Random access to windows of seq_len + 1 tokens with stride seq_len."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self.tokens, self.seq_len = tokens, seq_len

  def __len__(self) -> int:
    return max(0, (len(self.tokens) - 1) // self.seq_len)

  def __getitem__(self, index: int) -> np.ndarray:
    start = index * self.seq_len
    return self.tokens[start:start + self.seq_len + 1]


def pad_rows(windows_BL: np.ndarray, batch_size: int) -> np.ndarray:
  """Pads a short last batch with -1 rows (no targets), keeping shapes static."""
  missing = batch_size - windows_BL.shape[0]
  return np.pad(windows_BL, ((0, missing), (0, 0)), constant_values=-1)


def to_lm_batch(windows_BL: np.ndarray) -> dict[str, np.ndarray]:
  """inputs = window[:-1], targets = window[1:]; weight 0 where padded."""
  inputs, targets = windows_BL[:, :-1], windows_BL[:, 1:]
  return {'inputs': np.maximum(inputs, 0).astype(np.int32),
          'targets': np.maximum(targets, 0).astype(np.int32),
          'weights': (targets >= 0).astype(np.float32)}
