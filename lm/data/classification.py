"""grain pipelines for text classification: tokenize, truncate, pad, batch.

Each example of a dataset with 'text' and a ClassLabel 'label' becomes
{'inputs', 'padding_mask', 'label', 'weights'} of fixed length `seq_len`:
the tokenizer's own special tokens ([CLS] ... [SEP]) where it defines them,
else the text followed by EOS; truncated, then right-padded. The last
evaluation batch is padded with rows of weight 0.
"""

import dataclasses

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
  train: grain.MapDataset  # infinite, shuffled, batched
  evaluation: dict[str, grain.MapDataset]  # validation/test: one pass
  token_bytes: np.ndarray
  train_examples: int  # in this process's shard


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


def make_classification_data(data_config, builder,
                             tokenizer: tokenizers.Tokenizer, *,
                             process_index: int = 0, process_count: int = 1
                             ) -> ClassificationData:
  """The batches of `builder`'s dataset (check_labelled first), encoded
  with `tokenizer` (lm/data/build.py resolves both)."""
  label = builder.info.features['label']
  seq_len = data_config.seq_len
  augmenter = augment.Augmenter.from_config(data_config.augment)

  def examples(split):
    source = datasets.documents(builder, split)
    return grain.MapDataset.source(source)

  def encoded(split):
    return examples(split).map(
        lambda ex: encode_example(ex['text'].decode('utf-8'),
                                  int(ex['label']), tokenizer, seq_len))

  if augmenter.enabled:
    # Perturbed anew each epoch, reproducibly (grain's per-element rng).
    train = examples('train').shuffle(data_config.shuffle_seed).repeat(
    ).random_map(lambda ex, rng: encode_example(
        ex['text'].decode('utf-8'), int(ex['label']), tokenizer, seq_len,
        augmenter, rng), seed=data_config.shuffle_seed)
  else:
    train = encoded('train').shuffle(data_config.shuffle_seed).repeat()
  train = pipeline.train_batches(train, data_config.batch_size,
                                 process_index, process_count)
  evaluation = {
      split: pipeline.eval_batches(encoded(split), data_config.eval_batch_size,
                                   process_index, process_count)
      for split in SPLITS[1:] if split in builder.info.splits}
  return ClassificationData(tokenizer, list(label.names), train, evaluation,
                            tokenizer.token_bytes(), len(examples('train')))
