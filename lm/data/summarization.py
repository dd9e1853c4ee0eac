"""Code summarization: a Python standard-library function -> the first line of
its docstring, as a tfds builder (offline).

The source is the function with its docstring removed, re-printed by
`ast.unparse` (so comments and original formatting are gone); the target is
the docstring's first line. Functions whose first line is shorter than 3 or
longer than 30 words, or whose code is longer than 1,500 characters, are
left out, as are test suites, site-packages, and duplicate code. A hash of the
module's path assigns whole files to train (80%), validation or test (10%
each), so methods of one class stay together. The stdlib is the running
Python's, so the dataset is that version's (recorded in the description).
Python Software Foundation License.
"""

import ast
import os
import sys
import sysconfig

import tensorflow_datasets as tfds

from lm.data import sources

_SKIP_DIRS = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages',
              '__pycache__', 'lib2to3', 'ensurepip', 'turtledemo'}
MAX_SOURCE_CHARS = 1500
MIN_WORDS, MAX_WORDS = 3, 30


def stdlib_files(root: str) -> list[str]:
  """The stdlib's .py files under `root`, relative paths, sorted."""
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS)
    found += [os.path.relpath(os.path.join(directory, f), root)
              for f in files if f.endswith('.py')]
  return sorted(found)


def function_summaries(code: str):
  """(name, source without docstring, docstring first line) per function."""
  try:
    tree = ast.parse(code)
  except (SyntaxError, ValueError):
    return
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    docstring = ast.get_docstring(node)
    if not docstring:
      continue
    summary = docstring.strip().splitlines()[0].strip()
    if not MIN_WORDS <= len(summary.split()) <= MAX_WORDS:
      continue
    body = node.body[1:] or [ast.Pass()]
    stripped = type(node)(**{**{f: getattr(node, f) for f in node._fields},
                             'body': body})
    source = ast.unparse(ast.fix_missing_locations(stripped))
    if len(source) <= MAX_SOURCE_CHARS:
      yield node.name, source, summary


class DocstringSummaries(tfds.core.GeneratorBasedBuilder):
  """Python functions and the first line of their docstrings."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Functions of the running Python stdlib.'}
  METRICS = ('rouge',)
  STDLIB = sysconfig.get_paths()['stdlib']

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Functions of the Python %d.%d standard library and the '
                     'first line of their docstrings.' % sys.version_info[:2]),
        features=tfds.features.FeaturesDict({
            'source': tfds.features.Text(), 'target': tfds.features.Text(),
            'reference': tfds.features.Text()}),
        supervised_keys=('source', 'target'),
        homepage='https://docs.python.org/3/library/',
        license='Python Software Foundation License')

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    return {split: self._generate_examples(split) for split in sources.SPLITS}

  def _generate_examples(self, split):
    seen = set()
    for path in stdlib_files(self.STDLIB):
      if sources.split_of(path) != split:
        continue
      with open(os.path.join(self.STDLIB, path), 'rb') as f:
        code = f.read().decode('utf-8', errors='replace')
      for index, (name, source, summary) in enumerate(
          function_summaries(code)):
        if source in seen:
          continue
        seen.add(source)
        yield f'{path}:{index}', {'source': source, 'target': summary,
                                  'reference': f'{path}:{name}'}
