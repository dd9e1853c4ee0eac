"""grain pipelines for text classification: tokenize, truncate, pad, batch.

Each example of a dataset with 'text' and a ClassLabel 'label' becomes
{'inputs', 'padding_mask', 'label', 'weights'} of fixed length `seq_len`:
the tokenizer's own special tokens ([CLS] ... [SEP]) where it defines them,
else the text followed by EOS; truncated, then right-padded. The last
evaluation batch is padded with rows of weight 0.
"""

import dataclasses
import functools

import grain
import numpy as np

from lm.data import augment
from lm.data import datasets
from lm.data import pipeline
from lm.data import tokenizers
from lm.errors import UsageError

SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass
class ClassificationData:
  tokenizer: tokenizers.Tokenizer
  class_names: list[str]
  evaluation: dict[str, grain.MapDataset]  # validation/test: one pass
  token_bytes: np.ndarray
  # None where only the evaluation was built
  # (make_classification_evaluation).
  train: grain.MapDataset | None = None  # infinite, shuffled, batched
  train_examples: int = 0  # rows of the train split


def encode_example(text: str, label: int, tokenizer, seq_len: int,
                   augmenter: augment.Augmenter | None = None,
                   rng: np.random.Generator | None = None
                   ) -> dict[str, np.ndarray]:
  if augmenter is not None:
    text = augmenter.text(text, rng)
  ids = tokenizers.encode_sequence(tokenizer, text)[:seq_len]
  if augmenter is not None:
    ids = augmenter.tokens(ids, tokenizer, rng)
  inputs = np.full(seq_len, tokenizer.pad_id, np.int32)
  inputs[:len(ids)] = ids
  mask = np.zeros(seq_len, bool)
  mask[:len(ids)] = True
  return {'inputs': inputs, 'padding_mask': mask,
          'label': np.int32(label), 'weights': np.float32(1.0)}


def check_labelled(builder, name: str) -> None:
  """Raises UsageError unless the dataset has class labels."""
  features = builder.info.features
  if not hasattr(features['label'] if 'label' in features else None,
                 'names'):
    raise UsageError(f'dataset {name!r} has no class labels; '
                     "data.objective='classify' needs a labelled dataset "
                     "such as 'tweet_sentiment'")


def make_classification_evaluation(data_config, builder,
                                   tokenizer: tokenizers.Tokenizer, *,
                                   process_index: int = 0,
                                   process_count: int = 1
                                   ) -> ClassificationData:
  """The evaluation splits' batches of `builder`'s dataset, encoded with
  `tokenizer` (lm/data/build.py resolves both); the train split is not
  read."""
  check_labelled(builder, data_config.name)
  evaluation = pipeline.encoded_evaluation(
      builder, SPLITS[1:], functools.partial(
          _encode_row, tokenizer=tokenizer, seq_len=data_config.seq_len),
      data_config.eval_batch_size, process_index, process_count)
  return ClassificationData(tokenizer,
                            list(builder.info.features['label'].names),
                            evaluation, tokenizer.token_bytes())


def make_classification_data(data_config, builder,
                             tokenizer: tokenizers.Tokenizer, *,
                             process_index: int = 0, process_count: int = 1
                             ) -> ClassificationData:
  """make_classification_evaluation's, with the train split's batches
  (augmented as data.augment says)."""
  data = make_classification_evaluation(
      data_config, builder, tokenizer, process_index=process_index,
      process_count=process_count)
  seq_len, seed = data_config.seq_len, data_config.shuffle_seed
  augmenter = augment.Augmenter.from_config(data_config.augment)
  examples = grain.MapDataset.source(datasets.documents(builder, 'train'))
  if augmenter.enabled:
    # Perturbed anew each epoch, reproducibly (grain's per-element rng).
    train = examples.shuffle(seed).repeat().random_map(
        lambda ex, rng: _encode_row(ex, tokenizer, seq_len, augmenter, rng),
        seed=seed)
  else:
    train = examples.map(functools.partial(
        _encode_row, tokenizer=tokenizer, seq_len=seq_len)).shuffle(
            seed).repeat()
  train = pipeline.train_batches(train, data_config.batch_size,
                                 process_index, process_count)
  return dataclasses.replace(data, train=train, train_examples=len(examples))


def _encode_row(example, tokenizer, seq_len: int,
                augmenter: augment.Augmenter | None = None,
                rng: np.random.Generator | None = None
                ) -> dict[str, np.ndarray]:
  return encode_example(example['text'].decode('utf-8'),
                        int(example['label']), tokenizer, seq_len, augmenter,
                        rng)
