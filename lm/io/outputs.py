"""New directories that appear whole or not at all.

A result (an imported or compressed workdir, an export) is built in a
sibling folder and renamed into place in one step once complete, so a
failure leaves nothing half-written, and nothing already there is touched.
"""

import os
import shutil
from typing import Any

import ml_collections

from lm.errors import UsageError
from lm.io import config_file
from lm.io.checkpoint import Checkpointer


def check_new_directory(path: str) -> None:
  """Refuses a `path` that holds anything: results never overwrite."""
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise UsageError(f'{path} already exists and is not empty; choose a new '
                     'directory (nothing was written)')


def staging_path(final: str) -> str:
  """A sibling folder a result is built in before its one rename."""
  staging = f'{final}.partial-{os.getpid()}'
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  return staging


def write_params_workdir(workdir: str, config: ml_collections.ConfigDict,
                         params: Any, tokenizer: Any, step: int = 0,
                         extra_files: dict[str, bytes] | None = None) -> None:
  """A new inference workdir: config.json, the tokenizer (lm/data's, which
  saves itself into a directory), a params-only
  checkpoint at `step` and any `extra_files` (name: contents). It appears
  whole (one rename) or not at all."""
  check_new_directory(workdir)
  final = os.path.abspath(workdir)
  staging = staging_path(final)
  try:
    for name, data in (extra_files or {}).items():
      with open(os.path.join(staging, name), 'wb') as f:
        f.write(data)
    config_file.save_config(config, staging)
    tokenizer.save(staging)
    checkpointer = Checkpointer(staging, async_save=False)
    checkpointer.save(step, params, None, None)
    checkpointer.close()
    if os.path.isdir(final):
      os.rmdir(final)  # Empty (checked above); replaced in one rename.
    os.rename(staging, final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
