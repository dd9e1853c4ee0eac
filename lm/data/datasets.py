"""Text corpora by name: build the tfds dataset once (offline), then read it.

Datasets are written as array_record and read through `as_data_source()`,
which needs no TensorFlow. A dataset's SentencePiece tokenizers are trained
on its train split and stored beside it, one file per vocabulary size.
"""

import os

import tensorflow_datasets as tfds

from lm.data import country_qa
from lm.data import sentiment
from lm.data import shakespeare
from lm.data import summarization
from lm.data import tokenizers
from lm.data import translation
from lm.data import wordnet
from lm.errors import UsageError

BUILDERS = {'shakespeare': shakespeare.ShakespearePlays,
            'tweet_sentiment': sentiment.TweetSentiment,
            'wordnet_topics': wordnet.WordNetTopics,
            'bible_en_es': translation.BibleTranslation,
            'docstring_summaries': summarization.DocstringSummaries,
            'country_qa': country_qa.CountryQA}
# Datasets of source/target texts, scored by generation (their METRICS).
TEXT_PAIR_DATASETS = tuple(name for name, builder in BUILDERS.items()
                           if hasattr(builder, 'METRICS'))


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder of `name`, prepared (built offline) if it is not yet."""
  if name not in BUILDERS:
    raise UsageError(f'unknown dataset {name!r}; known: {sorted(BUILDERS)}')
  builder = BUILDERS[name](data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def documents(builder: tfds.core.DatasetBuilder, split: str):
  """A random-access source of the split's examples (dicts of bytes)."""
  if split not in builder.info.splits:
    raise UsageError(f'dataset {builder.name} has no split {split!r}; it has '
                     f'{sorted(builder.info.splits)}')
  return builder.as_data_source(split=split)


def texts(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
  """The split's texts: 'text', or 'source' and 'target' of text pairs."""
  keys = [k for k in ('text', 'source', 'target')
          if k in builder.info.features]
  return [ex[k].decode('utf-8') for ex in documents(builder, split)
          for k in keys]


def get_tokenizer(kind: str, builder: tfds.core.DatasetBuilder,
                  vocab_size: int) -> tokenizers.Tokenizer:
  """'byte', a SentencePiece BPE trained on the train split (cached), or
  the path of a directory holding a tokenizer (e.g. an imported workdir)."""
  if kind == 'byte':
    return tokenizers.ByteTokenizer()
  if os.path.isdir(kind):
    return tokenizers.load_tokenizer(kind)
  if kind != 'sentencepiece':
    raise UsageError(f'data.tokenizer={kind!r} is not one of '
                     "['byte', 'sentencepiece'] or a directory holding a "
                     'tokenizer')
  directory = os.path.join(builder.data_dir, 'tokenizers', f'spm_bpe_{vocab_size}')
  try:
    return tokenizers.load_tokenizer(directory)
  except UsageError:
    pass  # Not trained yet.
  tokenizer = tokenizers.train_sentencepiece(texts(builder, 'train'), vocab_size)
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(directory)
  return tokenizer
