"""orbax checkpoints of a workdir: params, optimizer/RNG state, data iterator.

Beside them, `config.json` holds the run's whole config. Three items per step,
so that inference restores params alone:
  params  the model parameters (what generate, evaluate and convert read)
  state   step, optimizer state and RNG key
  data    the grain iterator's state (JSON), so a resumed run sees the same
          batches an uninterrupted one would
Saves are asynchronous; orbax writes each step to a temporary folder and
renames it when complete, so a crash never leaves a half-written step that
looks finished.
"""

import dataclasses
import json
import os
import shutil
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from lm import models
from lm.data import tokenizers
from lm.errors import UsageError

_ITEMS = ('params', 'state', 'data')
CONFIG_FILE = 'config.json'  # The run's whole config, beside checkpoints/.


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:
  """A thin CheckpointManager over `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
        create=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(
        checkpoint_dir(workdir), item_names=_ITEMS, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, params: Any, state: Any | None,
           data_state: dict | None) -> None:
    """`state` None saves params alone (an imported checkpoint)."""
    items = {'params': ocp.args.StandardSave(params)}
    if state is not None:
      items['state'] = ocp.args.StandardSave(state)
    if data_state is not None:
      items['data'] = ocp.args.JsonSave(data_state)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def has_train_state(self, step: int) -> bool:
    """False for params-only checkpoints, such as imported ones."""
    # The Composite lists the items saved at that step (values may be None).
    return 'state' in self._manager.item_metadata(step)

  def restore(self, step: int, abstract_params: Any, abstract_state: Any
              ) -> tuple[Any, Any, dict | None]:
    """Params, state and data-iterator state (None if none was saved)."""
    items = {'params': ocp.args.StandardRestore(abstract_params),
             'state': ocp.args.StandardRestore(abstract_state)}
    has_data = 'data' in self._manager.item_metadata(step)
    if has_data:
      items['data'] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return (restored['params'], restored['state'],
            restored['data'] if has_data else None)

  def restore_params(self, abstract_params: Any, step: int | None = None):
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return restored['params']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def load_params(workdir: str, abstract_params: Any) -> tuple[Any, int]:
  """The latest params of a workdir, for inference; (params, step)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise UsageError(f'{workdir} has no checkpoints; train into it first '
                     '(python -m experiments.train --workdir=...)')
  checkpointer = Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  if step is None:
    raise UsageError(f'{workdir} has no complete checkpoint; train into it '
                     'first (python -m experiments.train --workdir=...)')
  params = checkpointer.restore_params(abstract_params, step)
  checkpointer.close()
  return params, step


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(path + '.tmp', path)


def load_config(workdir: str, defaults: ml_collections.ConfigDict | None = None
                ) -> ml_collections.ConfigDict:
  """The workdir's config; keys it lacks (added to lm after it was written)
  are taken from `defaults` (e.g. configs/base.py), which keep old runs'
  behaviour."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UsageError(f'{workdir} has no {CONFIG_FILE}; is it a workdir '
                     'written by experiments/train.py?')
  with open(path) as f:
    saved = json.load(f)
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


@dataclasses.dataclass
class Restored:
  """What inference needs from a workdir."""

  model_config: models.ModelConfig
  params: Any
  step: int
  tokenizer: tokenizers.Tokenizer


def restore(workdir: str) -> Restored:
  """The model config, latest params and tokenizer a workdir holds."""
  model_config = models.ModelConfig.from_config(load_config(workdir).model)
  tokenizer = tokenizers.load_tokenizer(workdir)
  params, step = load_params(
      workdir, models.abstract_params(models.build_model(model_config)))
  return Restored(model_config, params, step, tokenizer)


def check_new_directory(path: str) -> None:
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
                         params: Any, tokenizer: tokenizers.Tokenizer,
                         step: int = 0,
                         extra_files: dict[str, bytes] | None = None) -> None:
  """A new inference workdir: config.json, the tokenizer, a params-only
  checkpoint at `step` and any `extra_files` (name: contents). It appears
  whole (one rename) or not at all."""
  check_new_directory(workdir)
  final = os.path.abspath(workdir)
  staging = staging_path(final)
  try:
    for name, data in (extra_files or {}).items():
      with open(os.path.join(staging, name), 'wb') as f:
        f.write(data)
    save_config(config, staging)
    tokenizer.save(staging)
    checkpointer = Checkpointer(staging, async_save=False)
    checkpointer.save(step, params, None, None)
    checkpointer.close()
    if os.path.isdir(final):
      os.rmdir(final)  # Empty (checked above); replaced in one rename.
    os.rename(staging, final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
