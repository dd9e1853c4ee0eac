"""WordNet 3.0 from the Debian package `wordnet-base`: topic classification of
glosses, and synonyms for data augmentation.

Every synset in `data.{noun,verb,adj,adv}` belongs to one of WordNet's 45
lexicographer files ("noun.animal", "verb.motion", ...): the task is to tell
which from the synset's gloss (its definition, without the quoted usage
examples). A hash of the synset's offset and part of speech makes the
80/10/10 split. WordNet 3.0 license (Princeton University): free to use,
copy and distribute with its copyright notice.
"""

import collections
import functools
import os
import re

import tensorflow_datasets as tfds

from lm.data import sources
from lm.errors import UsageError

WORDNET_DIR = '/usr/share/wordnet'
_APT = 'apt-get install wordnet-base'
_POS_FILES = ('noun', 'verb', 'adj', 'adv')
# lexnames(5WN): the lexicographer file of each number in a data line.
LEXNAMES = (
    'adj.all', 'adj.pert', 'adv.all', 'noun.Tops', 'noun.act', 'noun.animal',
    'noun.artifact', 'noun.attribute', 'noun.body', 'noun.cognition',
    'noun.communication', 'noun.event', 'noun.feeling', 'noun.food',
    'noun.group', 'noun.location', 'noun.motive', 'noun.object', 'noun.person',
    'noun.phenomenon', 'noun.plant', 'noun.possession', 'noun.process',
    'noun.quantity', 'noun.relation', 'noun.shape', 'noun.state',
    'noun.substance', 'noun.time', 'verb.body', 'verb.change',
    'verb.cognition', 'verb.communication', 'verb.competition',
    'verb.consumption', 'verb.contact', 'verb.creation', 'verb.emotion',
    'verb.motion', 'verb.perception', 'verb.possession', 'verb.social',
    'verb.stative', 'verb.weather', 'adj.ppl')
_LICENSE = ('WordNet 3.0, Princeton University; free to use, copy and '
            'distribute with its copyright notice (Debian wordnet-base).')

Synset = collections.namedtuple('Synset', 'key lexname words gloss')


def check_installed(wordnet_dir: str) -> None:
  if not os.path.exists(os.path.join(wordnet_dir, 'data.noun')):
    raise UsageError(f'WordNet data files are not in {wordnet_dir}; install '
                     f'them with: {_APT}')


def parse_data_line(line: str, pos: str) -> Synset | None:
  """One synset of a data.* file (lines starting with spaces are license)."""
  if not line or line.startswith(' '):
    return None
  fields, _, gloss = line.partition(' | ')
  parts = fields.split()
  offset, lexfile, word_count = parts[0], int(parts[1]), int(parts[3], 16)
  # Adjectives may carry a syntactic marker: 'galore(ip)'.
  words = [re.sub(r'\(\w+\)$', '', parts[4 + 2 * i]).replace('_', ' ')
           for i in range(word_count)]
  # The gloss is the definition, then '; "usage example"' parts.
  definition = gloss.split('; "')[0].strip().strip(';').strip()
  return Synset(f'{pos}{offset}', LEXNAMES[lexfile], words, definition)


def read_synsets(wordnet_dir: str = WORDNET_DIR) -> list[Synset]:
  check_installed(wordnet_dir)
  synsets = []
  for pos in _POS_FILES:
    with open(os.path.join(wordnet_dir, f'data.{pos}'), encoding='utf-8',
              errors='replace') as f:
      synsets += [s for s in (parse_data_line(line.rstrip('\n'), pos)
                              for line in f) if s]
  return synsets


@functools.cache
def synonyms(wordnet_dir: str = WORDNET_DIR) -> dict[str, tuple[str, ...]]:
  """Lower-case single word -> the other single words sharing a synset."""
  table = collections.defaultdict(set)
  for synset in read_synsets(wordnet_dir):
    words = {w.lower() for w in synset.words if ' ' not in w}
    for word in words:
      table[word] |= words - {word}
  return {word: tuple(sorted(others)) for word, others in table.items()
          if others}


class WordNetTopics(tfds.core.GeneratorBasedBuilder):
  """WordNet glosses labelled with their lexicographer file (45 classes)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'WordNet 3.0 glosses from Debian wordnet-base.'}
  WORDNET_DIR = WORDNET_DIR

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='WordNet glosses and their lexicographer file.',
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=LEXNAMES)}),
        supervised_keys=('text', 'label'),
        homepage='https://wordnet.princeton.edu/',
        license=_LICENSE)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    synsets = read_synsets(self.WORDNET_DIR)
    return {split: self._generate_examples(synsets, split)
            for split in sources.SPLITS}

  def _generate_examples(self, synsets, split):
    for synset in synsets:
      if synset.gloss and sources.split_of(synset.key) == split:
        yield synset.key, {'text': synset.gloss, 'label': synset.lexname}
