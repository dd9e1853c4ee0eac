"""A run's data from its config's `data` section: the language-model
pipeline, text pairs or classification, whichever the objective reads.

Only a run that reads data imports this module (and with it grain and
tensorflow-datasets): the benchmark feeds random tokens and runs where they
are not installed.
"""

import ml_collections

from lm.data import classification
from lm.data import config as data_config
from lm.data import datasets
from lm.data import pipeline
from lm.data import text_pairs
from lm.errors import UsageError


def tokenizer(config: ml_collections.ConfigDict):
  """The tokenizer data.tokenizer names for `config` (a `data` section):
  bytes, a directory's, or a SentencePiece model trained on the dataset's
  train split (and cached) on first use."""
  builder = datasets.get_builder(config.name, config.data_dir or None)
  return datasets.get_tokenizer(config.tokenizer, builder, config.vocab_size)


def make(config: ml_collections.ConfigDict, tokenizer,
         process_index: int = 0, process_count: int = 1):
  """This process's share of the data `config` (a `data` section) names,
  encoded with `tokenizer` (training's is `tokenizer(config)`; scoring
  reads the workdir's own)."""
  return _make(config, _checked_builder(config), tokenizer, process_index,
               process_count)


def _checked_builder(config: ml_collections.ConfigDict):
  """The dataset's builder (built offline and cached on first use), after
  checking that it holds what the objective reads."""
  builder = datasets.get_builder(config.name, config.data_dir or None)
  if config.objective == 'classify':
    classification.check_labelled(builder, config.name)
  elif config.objective in data_config.TEXT_PAIR_OBJECTIVES:
    text_pairs.check_pairs(builder, config.name, config.objective)
  return builder


def _make(config, builder, tokenizer, process_index: int,
          process_count: int):
  shard = {'process_index': process_index, 'process_count': process_count}
  if config.objective == 'classify':
    return classification.make_classification_data(config, builder,
                                                   tokenizer, **shard)
  if config.objective in data_config.TEXT_PAIR_OBJECTIVES:
    return text_pairs.make_text_pair_data(config, builder, tokenizer,
                                          **shard)
  return pipeline.make_lm_data(config, builder, tokenizer, **shard)


def extra_ids(data) -> int:
  """Ids the objective adds after the tokenizer's ([MASK], sentinels)."""
  return data.objective.extra_ids if isinstance(data, pipeline.LmData) else 0


def evaluation(data, split: str, dataset: str):
  """The batches of `split`: any split a task dataset has; 'validation' of a
  language-model corpus."""
  if isinstance(data, (classification.ClassificationData,
                       text_pairs.TextPairData)):
    if split not in data.evaluation:
      raise UsageError(f'dataset {dataset!r} has no {split!r} split; it has '
                       f'{sorted(data.evaluation)}')
    return data.evaluation[split]
  if split != 'validation':
    raise UsageError(f'language-model datasets are evaluated on '
                     f"'validation', not {split!r}")
  return data.validation
