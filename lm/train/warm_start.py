"""Starting a run from another workdir's parameters (config.init_from).

Parameters the two models share by name take the other workdir's values;
the rest (a new classification head, say) start fresh. The architecture
must match: a differing model key outside model/config.py HEAD_KEYS, or a
shared name of another shape, is refused.
"""

import dataclasses
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp

from lm import restore
from lm.errors import UsageError
from lm.model.config import HEAD_KEYS
from lm.model.config import ModelConfig


def params_from(workdir: str, model_config: ModelConfig, fresh: Any,
                objective: str) -> tuple[Any, str]:
  """(params, a line saying where they came from and what is new): the
  latest params of `workdir` where this model has the same names, `fresh`
  (this model's initial params) elsewhere."""
  restored = restore.workdir(workdir)
  theirs = restored.model_config
  if theirs.family != model_config.family:
    raise UsageError(
        f'init_from={workdir} holds a {theirs.family} model, which cannot '
        f'serve this task: data.objective={objective!r} with model.family='
        f'{model_config.family!r}; start from a {model_config.family} '
        'checkpoint')
  for field in dataclasses.fields(ModelConfig):
    if field.name in HEAD_KEYS:
      continue
    their_value = getattr(theirs, field.name)
    our_value = getattr(model_config, field.name)
    if their_value != our_value:
      raise UsageError(
          f'init_from={workdir} has model.{field.name}={their_value!r}, this '
          f'config {our_value!r}; copy the model section of '
          f'{workdir}/config.json')
  loaded = flax.traverse_util.flatten_dict(
      jax.device_get(restored.params), sep='/')
  merged, new = {}, []
  for name, value in flax.traverse_util.flatten_dict(fresh, sep='/').items():
    if name not in loaded:
      merged[name] = value
      new.append(name)
    elif loaded[name].shape != value.shape:
      raise UsageError(
          f'init_from={workdir} has {name} of shape {loaded[name].shape}, '
          f'this model {value.shape}; copy the model section of '
          f'{workdir}/config.json')
    else:
      merged[name] = jnp.asarray(loaded[name], value.dtype)
  if len(new) == len(merged):
    raise UsageError(f'init_from={workdir} shares no parameter with this '
                     'model; is it the same architecture?')
  return flax.traverse_util.unflatten_dict(merged, sep='/'), (
      f'Initialized from {workdir} (step {restored.step}); new: '
      + (', '.join(sorted(new)) or 'nothing'))
