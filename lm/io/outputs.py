"""New directories that appear whole or not at all.

A result (an imported or compressed workdir, an export) is built in a
sibling folder and renamed into place in one step once complete, so a
failure leaves nothing half-written, and nothing already there is touched.
"""

import contextlib
import os
import shutil
from typing import Any

import ml_collections

from lm.errors import UsageError
from lm.io import config_file
from lm.io import files
from lm.io import layout
from lm.io import paths
from lm.io.checkpoint import Checkpointer


@contextlib.contextmanager
def building(output: str):
  """Yields a sibling folder to build `output` in; when the block ends
  without an error, the folder becomes `output` in one rename. `output`
  is checked before and again just before the rename."""
  final = paths.new_directory(output)
  staging = f'{final}.partial-{os.getpid()}'
  marker = os.path.join(staging, layout.PARTIAL)
  if os.path.lexists(staging):
    # Left by an earlier run of lm that had this pid: lm's only if it holds
    # the marker; a folder or link of the user's there is not deleted.
    if os.path.islink(staging) or not os.path.isfile(marker):
      raise UsageError(f'{staging} is in the way and was not made by lm; '
                       'move it away, or give another output')
    shutil.rmtree(staging)
  os.makedirs(staging)
  files.write_atomic(marker, '')
  try:
    yield staging
    paths.new_directory(output)
    os.remove(marker)
    if os.path.isdir(final):
      os.rmdir(final)  # Empty (checked); replaced in one rename.
    os.rename(staging, final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def write_params_workdir(workdir: str, config: ml_collections.ConfigDict,
                         params: Any, tokenizer: Any, step: int = 0,
                         extra_files: dict[str, bytes] | None = None) -> None:
  """A new inference workdir: config.json, the tokenizer (lm/data's, which
  saves itself into a directory), a params-only
  checkpoint at `step` and any `extra_files` (name: contents). It appears
  whole (one rename) or not at all."""
  with building(workdir) as staging:
    for name, data in (extra_files or {}).items():
      with open(os.path.join(staging, name), 'wb') as f:
        f.write(data)
    config_file.save_config(config, staging)
    tokenizer.save(staging)
    checkpointer = Checkpointer(staging, async_save=False)
    checkpointer.save(step, params, None, None)
    checkpointer.close()
