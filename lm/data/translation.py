"""English -> Spanish translation: the King James Bible against the Reina-Valera
1909, aligned by verse, as a tfds builder (offline).

Both texts are public domain and come from Debian packages as SWORD modules
(`sword-text-kjv`: engKJV2006eb, `sword-text-sparv`: spaRV1909eb, both in
KJV versification, so book/chapter/verse name the same verse in both); the
PyPI package `pysword` reads them. A verse empty in either Bible is left
out. Whole chapters go to one split -- a hash of the book and chapter puts
80% in train, 10% in validation, 10% in test -- so neighbouring verses, which
often repeat each other, do not straddle train and test.
"""

import os
import re

import tensorflow_datasets as tfds

from lm.data import sources
from lm.errors import UsageError

SWORD_DIR = '/usr/share/sword'
SOURCE_MODULE = 'engKJV2006eb'
TARGET_MODULE = 'spaRV1909eb'
_APT = 'apt-get install sword-text-kjv sword-text-sparv'
_LICENSE = ('King James Version (1769 text) and Reina-Valera 1909, both '
            'public domain, from the Debian SWORD modules engKJV2006eb and '
            'spaRV1909eb (CrossWire Bible Society, eBible.org).')


def read_verses(sword_dir: str, module: str) -> dict[tuple[str, int, int], str]:
  """{(book, chapter, verse): text} of one SWORD Bible module."""
  if not os.path.exists(os.path.join(sword_dir, 'mods.d',
                                     module + '.conf')):
    raise UsageError(f'the translation task needs the SWORD module {module} '
                     f'in {sword_dir}; install it with: {_APT}')
  from pysword.modules import SwordModules  # pylint: disable=g-import-not-at-top
  modules = SwordModules(sword_dir)
  modules.parse_modules()
  bible = modules.get_bible_from_module(module)
  structure = bible.get_structure()
  verses = {}
  for books in structure.get_books().values():
    for book in books:
      for chapter, count in enumerate(book.chapter_lengths, 1):
        indices = structure.ref_to_indicies(books=[book.osis_name],
                                            chapters=[chapter])
        # One index per verse, in order. The public get() skips empty
        # verses, which would shift the alignment; read each index instead.
        (testament, chapter_indices), = indices.items()
        assert len(chapter_indices) == count
        for verse, index in enumerate(chapter_indices, 1):
          text = bible._text_for_index(testament, index)  # pylint: disable=protected-access
          if text and '<' in text:
            text = bible._cleaner.clean(text)  # pylint: disable=protected-access
          verses[book.osis_name, chapter, verse] = clean_verse(text or '')
  return verses


def clean_verse(text: str) -> str:
  # The KJV module marks paragraphs with a pilcrow; whitespace is irregular.
  return re.sub(r'\s+', ' ', text.replace('\u00b6', '')).strip()


def aligned_pairs(source: dict, target: dict):
  """(reference, source text, target text) for verses present in both."""
  for ref, text in source.items():
    if text and target.get(ref):
      yield ref, text, target[ref]


class BibleTranslation(tfds.core.GeneratorBasedBuilder):
  """Verse pairs: English (KJV) source, Spanish (Reina-Valera 1909) target."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'engKJV2006eb and spaRV1909eb aligned by verse.'}
  METRICS = ('bleu', 'chrf')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Bible verses in English (KJV) and Spanish (RV 1909).',
        features=tfds.features.FeaturesDict({
            'source': tfds.features.Text(), 'target': tfds.features.Text(),
            'reference': tfds.features.Text()}),
        supervised_keys=('source', 'target'),
        homepage='https://crosswire.org/sword/',
        license=_LICENSE)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    pairs = list(aligned_pairs(read_verses(SWORD_DIR, SOURCE_MODULE),
                               read_verses(SWORD_DIR, TARGET_MODULE)))
    return {split: self._generate_examples(pairs, split)
            for split in sources.SPLITS}

  def _generate_examples(self, pairs, split):
    for (book, chapter, verse), source, target in pairs:
      if sources.split_of(f'{book} {chapter}') == split:
        yield f'{book}.{chapter}.{verse}', {
            'source': source, 'target': target,
            'reference': f'{book} {chapter}:{verse}'}
