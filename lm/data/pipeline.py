"""grain pipelines for pretraining: tokenize, pack, shuffle, corrupt, batch.

Documents are tokenized and joined end to end, each followed by EOS, then cut
into windows every `seq_len` tokens. For next-token prediction a window has
`seq_len + 1` tokens, overlapping the next by one (the last target of a
window is the first input of the next), so every token is predicted once per
epoch. The objective (lm/data/objectives.py) turns each window into an
example -- masking it for BERT, cutting spans for T5 -- with a random
generator grain derives from the seed and the element's index, so the
corruption differs each epoch and a resumed run sees what an uninterrupted
one would. Windows are shuffled globally, differently each epoch; the
iterator's state is a few integers, saved with every checkpoint.
"""

import dataclasses

import grain
import numpy as np

from lm.data import datasets
from lm.data import objectives
from lm.data import tokenizers
from lm.errors import UsageError


@dataclasses.dataclass
class LmData:
  """What training needs from the data: batches, the tokenizer, byte counts."""

  tokenizer: tokenizers.Tokenizer
  objective: objectives.Objective
  validation: grain.MapDataset  # one pass, batched, last batch padded
  token_bytes: np.ndarray  # [tokenizer vocab] UTF-8 bytes per token id
  # None where only the evaluation was built (make_lm_evaluation).
  train: grain.MapDataset | None = None  # infinite, shuffled, batched
  train_examples: int = 0  # windows in the train split


def make_lm_evaluation(data_config, builder, tokenizer: tokenizers.Tokenizer,
                       *, process_index: int = 0, process_count: int = 1
                       ) -> LmData:
  """The validation batches of `builder`'s corpus, encoded with `tokenizer`
  (lm/data/build.py resolves both); the train split is not read."""
  if data_config.seq_len <= 0 or data_config.batch_size <= 0:
    raise UsageError('data.seq_len and data.batch_size must be positive, got '
                     f'{data_config.seq_len} and {data_config.batch_size}')
  objective = objectives.Objective.from_config(data_config, tokenizer)
  windows = _windows(builder, 'validation', tokenizer, data_config.seq_len,
                     objective.window_len)
  # Validation corruption is the same at every evaluation (fixed seed).
  validation = eval_batches(
      windows.random_map(objective.example, seed=data_config.shuffle_seed),
      data_config.eval_batch_size, process_index, process_count)
  return LmData(tokenizer, objective, validation, tokenizer.token_bytes())


def make_lm_data(data_config, builder, tokenizer: tokenizers.Tokenizer, *,
                 process_index: int = 0, process_count: int = 1) -> LmData:
  """make_lm_evaluation's, with the train split's batches."""
  data = make_lm_evaluation(data_config, builder, tokenizer,
                            process_index=process_index,
                            process_count=process_count)
  windows = _windows(builder, 'train', tokenizer, data_config.seq_len,
                     data.objective.window_len)
  train = train_batches(
      windows.shuffle(data_config.shuffle_seed).repeat()
      .random_map(data.objective.example, seed=data_config.shuffle_seed),
      data_config.batch_size, process_index, process_count)
  return dataclasses.replace(data, train=train, train_examples=len(windows))


def _windows(builder, split: str, tokenizer: tokenizers.Tokenizer,
             seq_len: int, length: int) -> grain.MapDataset:
  tokens = tokenize_and_join(datasets.documents(builder, split), tokenizer)
  windows = Windows(tokens, seq_len, length)
  if not len(windows):
    raise UsageError(f'the {split} split has only {len(tokens)} tokens, '
                     f'too few for data.seq_len={seq_len}')
  return grain.MapDataset.source(windows)


def encoded_evaluation(builder, splits: tuple[str, ...], encode,
                       batch_size: int, process_index: int = 0,
                       process_count: int = 1) -> dict[str, grain.MapDataset]:
  """Each of `splits` that `builder`'s dataset has: its rows, `encode`d one
  by one (row -> example), in eval_batches."""
  return {split: eval_batches(
      grain.MapDataset.source(datasets.documents(builder, split)).map(encode),
      batch_size, process_index, process_count)
          for split in splits if split in builder.info.splits}


def train_batches(examples: grain.MapDataset, batch_size: int,
                  process_index: int = 0, process_count: int = 1
                  ) -> grain.MapDataset:
  """This process's rows of each global batch of an endless `examples`."""
  return _process_rows(examples, batch_size, process_index, process_count,
                       pad=False).batch(batch_size // process_count,
                                        drop_remainder=True)


def eval_batches(examples: grain.MapDataset, batch_size: int,
                 process_index: int = 0, process_count: int = 1
                 ) -> grain.MapDataset:
  """One pass over `examples` in this process's rows of global batches; the
  last batch is filled with zero rows (weight 0: nothing scored)."""
  return _process_rows(examples, batch_size, process_index, process_count,
                       pad=True).batch(batch_size // process_count)


def _process_rows(examples: grain.MapDataset, batch_size: int,
                  process_index: int, process_count: int, pad: bool
                  ) -> grain.MapDataset:
  """The examples process `process_index` of `process_count` contributes.

  Global batch b is examples [b * batch_size, (b + 1) * batch_size); each
  process reads a contiguous block of its rows, in process order -- the
  rows of this process's devices on the batch axes. So any number of
  processes together train on exactly the batches one process would, and
  each reads (and corrupts, augments, tokenizes) only its own.
  """
  if batch_size % process_count:
    raise UsageError(f'batch size {batch_size} is not divisible by the '
                     f'{process_count} processes; use a multiple of '
                     f'{process_count}')
  local = batch_size // process_count
  total = len(examples)
  num_batches = -(-total // batch_size) if pad else total // batch_size
  blank = None
  if pad and total:  # Zeros shaped like an example.
    blank = {k: np.zeros_like(v) for k, v in examples[0].items()}

  def example(i):
    index = (i // local) * batch_size + process_index * local + i % local
    return examples[index] if index < total else blank

  return grain.MapDataset.range(num_batches * local).map(example)


def tokenize_and_join(documents, tokenizer: tokenizers.Tokenizer) -> np.ndarray:
  """One int32 stream: each document's tokens followed by EOS."""
  eos = np.array([tokenizer.eos_id], np.int32)
  # Whole arrays per document: a corpus of millions of tokens is joined by
  # numpy, not one Python iteration per token.
  parts = [part for i in range(len(documents)) for part in (
      np.asarray(tokenizer.encode(documents[i]['text'].decode('utf-8')),
                 np.int32), eos)]
  return np.concatenate(parts) if parts else np.zeros([0], np.int32)


class Windows:
  """Random access to windows of `length` tokens, one every `stride`."""

  def __init__(self, tokens: np.ndarray, stride: int, length: int):
    self.tokens, self.stride, self.length = tokens, stride, length

  def __len__(self) -> int:
    return max(0, (len(self.tokens) - self.length) // self.stride + 1)

  def __getitem__(self, index: int) -> np.ndarray:
    start = index * self.stride
    return self.tokens[start:start + self.length]
