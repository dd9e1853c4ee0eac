"""docs/configs.md is generated from the config files and kept current."""

import ast
import os
import re

from configs import base
from tests.conftest import ROOT
from tools import config_reference


def _keys(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _keys(value, f'{prefix}{key}.')
    else:
      yield prefix + key


def test_the_reference_matches_the_config_files():
  with open(os.path.join(ROOT, 'docs', 'configs.md'), encoding='utf-8') as f:
    written = f.read()
  assert written == config_reference.reference(), (
      'docs/configs.md is out of date: run python -m '
      'tools.config_reference')


def test_every_key_has_a_row_and_every_config_its_command():
  text = config_reference.reference()
  rows = [line for line in text.splitlines() if line.startswith('| `')]
  keys = list(_keys(base.get_base_config()))
  for key in keys:
    if key != 'init_from':  # (A top-level key: a paragraph, not a row.)
      assert any(row.startswith(f'| `{key}` |') for row in rows), key
  assert '### `init_from`' in text
  for path in config_reference.config_files():
    with open(path, encoding='utf-8') as f:
      doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and re.search(r'python -m (experiments|benchmarks|tools)\.',
                             doc), path
