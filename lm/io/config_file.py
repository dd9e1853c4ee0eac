"""A workdir's config.json: the run's whole config, written atomically and
read back with the defaults of keys added to lm since."""

import os

import ml_collections

from lm.errors import UsageError
from lm.io import files
from lm.io import json_files
from lm.io import layout
from lm.io import paths


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  files.write_atomic(layout.config_path(workdir),
                     config.to_json_best_effort(indent=2))


# The config's sections (configs/base.py); its other keys are plain values.
SECTIONS = ('model', 'data', 'optim', 'prune', 'distill', 'train', 'mesh',
            'privacy', 'evaluate', 'bench', 'sample')


def load_config(workdir: str, defaults: ml_collections.ConfigDict | None = None
                ) -> ml_collections.ConfigDict:
  """The workdir's config; keys it lacks (added to lm after it was written)
  are taken from `defaults` (e.g. configs/base.py), which keep old runs'
  behaviour."""
  paths.existing_directory(workdir)
  path = layout.config_path(workdir)
  if not os.path.exists(path):
    raise UsageError(f'{workdir} has no {layout.CONFIG}; is it a workdir '
                     'written by experiments/train.py?')
  saved = json_files.load(path, "workdir's config")
  if not (isinstance(saved, dict) and isinstance(saved.get('model'), dict)):
    raise UsageError(f'{path} holds no model section; is it a workdir '
                     'written by experiments/train.py?')
  for section, value in saved.items():
    if section in SECTIONS and not isinstance(value, dict):
      raise UsageError(f'{path} has a {section} section that is a JSON '
                       f'{type(value).__name__}, not an object; the file is '
                       'damaged')
  if defaults is None:
    return ml_collections.ConfigDict(saved)
  return ml_collections.ConfigDict(_fill_missing(defaults.to_dict(), saved))


def _fill_missing(defaults: dict, saved: dict) -> dict:
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _fill_missing(value, merged[key])
  return merged
