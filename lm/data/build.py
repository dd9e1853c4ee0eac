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
  return datasets.get_tokenizer(config.tokenizer, _builder(config),
                                config.vocab_size)


def make(config: ml_collections.ConfigDict, tokenizer,
         process_index: int = 0, process_count: int = 1,
         evaluation_only: bool = False):
  """This process's share of the data `config` (a `data` section) names,
  encoded with `tokenizer` (training's is `tokenizer(config)`).
  `evaluation_only`: the evaluation splits alone, for scoring a trained
  model with its own tokenizer; the train split is neither read nor
  encoded (`train` is None)."""
  if config.objective == 'classify':
    maker = (classification.make_classification_evaluation
             if evaluation_only else classification.make_classification_data)
  elif config.objective in data_config.TEXT_PAIR_OBJECTIVES:
    maker = (text_pairs.make_text_pair_evaluation
             if evaluation_only else text_pairs.make_text_pair_data)
  else:
    maker = (pipeline.make_lm_evaluation
             if evaluation_only else pipeline.make_lm_data)
  return maker(config, _builder(config), tokenizer,
               process_index=process_index, process_count=process_count)


def _builder(config: ml_collections.ConfigDict):
  """The dataset's builder, built offline and cached on first use."""
  return datasets.get_builder(config.name, config.data_dir or None)


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
