"""grain pipelines for text-to-text tasks (translation, summarization, QA).

A dataset with 'source' and 'target' texts becomes examples for one of two
objectives:

  seq2seq   encoder-decoder: the encoder reads the source + EOS (up to
            `seq_len` tokens, padded, 'encoder_mask' True at real tokens);
            the decoder reads BOS + target and predicts target + EOS (up to
            `target_len` tokens).
  instruct  decoder-only: one sequence, prompt then answer + EOS, where the
            prompt is `data.prompt` with the source in place of '{source}';
            only the answer's tokens are scored (weights 0 on the prompt), as
            in instruction tuning. The answer is cut to `target_len` tokens
            and the prompt to the `seq_len - target_len` before them: a long
            source loses its end, the prompt's instructions stay.

Training batches are infinite and shuffled; evaluation batches go once
through a split with the last one padded by rows of weight 0. Generation
(lm/evaluate/score.py) reads the raw pairs through `pairs(split)`.
"""

import dataclasses
from typing import Callable

import grain
import numpy as np

from lm.data import config
from lm.data import datasets
from lm.data import pipeline
from lm.data import sources
from lm.data import tokenizers
from lm.errors import UsageError

@dataclasses.dataclass
class TextPairData:
  tokenizer: tokenizers.Tokenizer
  objective: str
  evaluation: dict[str, grain.MapDataset]
  token_bytes: np.ndarray
  metrics: tuple[str, ...]  # what generation is scored by (lm/evaluate/text_metrics.py)
  raw_examples: dict  # evaluation split -> random access to its raw examples
  encode_source: Callable[[str], list[int]]  # source text -> model input ids
  target_len: int  # the most target tokens trained on, and generated
  # None where only the evaluation was built (make_text_pair_evaluation).
  train: grain.MapDataset | None = None  # infinite, shuffled, batched
  train_examples: int = 0  # pairs of the train split

  def pairs(self, split: str) -> list[tuple[str, str]]:
    return [(ex['source'].decode('utf-8'), ex['target'].decode('utf-8'))
            for ex in self.raw_examples[split]]


def seq2seq_example(source_ids, target_ids, *, bos_id: int, eos_id: int,
                    pad_id: int, seq_len: int, target_len: int
                    ) -> dict[str, np.ndarray]:
  source = list(source_ids[:seq_len - 1]) + [eos_id]
  target = list(target_ids[:target_len - 1]) + [eos_id]
  encoder_inputs = np.full(seq_len, pad_id, np.int32)
  encoder_inputs[:len(source)] = source
  inputs = np.full(target_len, pad_id, np.int32)
  inputs[:len(target)] = [bos_id] + target[:-1]
  targets = np.full(target_len, pad_id, np.int32)
  targets[:len(target)] = target
  weights = np.zeros(target_len, np.float32)
  weights[:len(target)] = 1.0
  return {'encoder_inputs': encoder_inputs,
          'encoder_mask': np.arange(seq_len) < len(source),
          'inputs': inputs, 'targets': targets, 'weights': weights}


def instruct_example(prompt_ids, answer_ids, *, eos_id: int, pad_id: int,
                     seq_len: int, target_len: int) -> dict[str, np.ndarray]:
  answer = list(answer_ids[:target_len - 1]) + [eos_id]
  prompt = list(prompt_ids[-(seq_len + 1 - len(answer)):])
  tokens = prompt + answer
  inputs = np.full(seq_len, pad_id, np.int32)
  inputs[:len(tokens) - 1] = tokens[:-1]
  targets = np.full(seq_len, pad_id, np.int32)
  targets[:len(tokens) - 1] = tokens[1:]
  weights = np.zeros(seq_len, np.float32)
  # Position t predicts token t + 1: the answer starts at len(prompt).
  weights[len(prompt) - 1:len(tokens) - 1] = 1.0
  return {'inputs': inputs, 'targets': targets, 'weights': weights}


def prompt_ids(encode: Callable[[str], list[int]], template: str,
               source: str, room: int) -> list[int]:
  """`template`'s tokens with `source` in place of '{source}', at most `room`
  of them: where they do not fit, the source loses its end (a function's
  signature, a verse's start and the instructions are what matter)."""
  ids = encode(template.replace('{source}', source))
  if len(ids) <= room:
    return ids
  head, _, tail = template.partition('{source}')
  head_ids, tail_ids = encode(head), encode(tail)
  keep = max(room - len(head_ids) - len(tail_ids), 0)
  return (head_ids + encode(source)[:keep] + tail_ids)[-room:]


def check_pairs(builder, name: str, objective: str) -> None:
  """Raises UsageError unless the dataset holds source/target pairs."""
  if 'target' not in builder.info.features:
    raise UsageError(
        f'dataset {name!r} has no source/target pairs; '
        f'data.objective={objective!r} needs one of '
        f'{sorted(datasets.TEXT_PAIR_DATASETS)}')


class _Encoding:
  """Text pairs as `objective`'s examples, with `tokenizer`."""

  def __init__(self, data_config, tokenizer: tokenizers.Tokenizer):
    self.data_config, self.tokenizer = data_config, tokenizer
    self.target_len = config.target_len(data_config)

  def source_ids(self, text: str) -> list[int]:
    """The source's tokens, before truncation, or the decoder prompt's,
    which leave room for target_len tokens within the model's seq_len."""
    if self.data_config.objective == 'seq2seq':
      return self.tokenizer.encode(text)
    return prompt_ids(self.tokenizer.encode, self.data_config.prompt, text,
                      self.data_config.seq_len - self.target_len)

  def encode_source(self, text: str) -> list[int]:
    if self.data_config.objective == 'seq2seq':
      return (self.source_ids(text)[:self.data_config.seq_len - 1]
              + [self.tokenizer.eos_id])
    return self.source_ids(text)

  def example(self, row) -> dict[str, np.ndarray]:
    ids = self.source_ids(row['source'].decode('utf-8'))
    target = self.tokenizer.encode(row['target'].decode('utf-8'))
    special = {'eos_id': self.tokenizer.eos_id,
               'pad_id': self.tokenizer.pad_id,
               'seq_len': self.data_config.seq_len,
               'target_len': self.target_len}
    if self.data_config.objective == 'seq2seq':
      return seq2seq_example(ids, target, bos_id=self.tokenizer.bos_id,
                             **special)
    return instruct_example(ids, target, **special)


def make_text_pair_evaluation(data_config, builder,
                              tokenizer: tokenizers.Tokenizer, *,
                              process_index: int = 0, process_count: int = 1
                              ) -> TextPairData:
  """The evaluation splits' batches of `builder`'s pairs, encoded with
  `tokenizer` (lm/data/build.py resolves both); the train split is not
  read."""
  return _evaluation(data_config, builder, _Encoding(data_config, tokenizer),
                     process_index, process_count)


def make_text_pair_data(data_config, builder,
                        tokenizer: tokenizers.Tokenizer, *,
                        process_index: int = 0, process_count: int = 1
                        ) -> TextPairData:
  """make_text_pair_evaluation's, with the train split's batches."""
  encoding = _Encoding(data_config, tokenizer)
  data = _evaluation(data_config, builder, encoding, process_index,
                     process_count)
  examples = grain.MapDataset.source(datasets.documents(builder, 'train'))
  train = pipeline.train_batches(
      examples.map(encoding.example).shuffle(
          data_config.shuffle_seed).repeat(),
      data_config.batch_size, process_index, process_count)
  return dataclasses.replace(data, train=train, train_examples=len(examples))


def _evaluation(data_config, builder, encoding: _Encoding,
                process_index: int, process_count: int) -> TextPairData:
  check_pairs(builder, data_config.name, data_config.objective)
  splits = tuple(split for split in sources.SPLITS if split != 'train')
  evaluation = pipeline.encoded_evaluation(
      builder, splits, encoding.example, data_config.eval_batch_size,
      process_index, process_count)
  raw = {split: datasets.documents(builder, split) for split in evaluation}
  return TextPairData(encoding.tokenizer, data_config.objective, evaluation,
                      encoding.tokenizer.token_bytes(),
                      type(builder).METRICS, raw, encoding.encode_source,
                      encoding.target_len)
