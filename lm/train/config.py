"""A training run's whole config, checked before any work: each section by
the module that owns it, then the rules that span sections.

  model    lm/model/config.py ModelConfig     data     lm/data/config.py
  (model, data and mesh together: lm/evaluate/evaluator.py, which scoring
  a trained model checks alone)
  optim    lm/train/optim.py                  privacy  lm/train/privacy.py
  prune    lm/compress/prune.py               distill  lm/compress/distill.py
  mesh     lm/sharding.py                     train    here (the run's cadence)

Nothing here reads data or builds a model, so a script refuses a bad config
in one line before it starts (experiments/cli.py), without importing the
training loop.
"""

import ml_collections

from lm import sharding
from lm.compress import distill
from lm.compress import prune
from lm.errors import UsageError
from lm.evaluate import evaluator
from lm.model.config import ModelConfig
from lm.train import optim
from lm.train import privacy

# train.* keys that count something and must be positive.
_POSITIVE_TRAIN_KEYS = ('num_steps', 'log_every', 'eval_every',
                        'checkpoint_every', 'keep_checkpoints',
                        'max_nonfinite_steps', 'grad_accum_steps')


def validate(config: ml_collections.ConfigDict,
             devices: int | None = None) -> ModelConfig:
  """Raises UsageError naming the first key that is wrong and the fix;
  returns the parsed model section. With `devices`, the mesh must also
  divide that many devices (a multi-process run knows how many only after
  joining, so the Trainer checks it again on its mesh)."""
  model_config = evaluator.validate_model_and_data(config)
  _validate_train_section(config.train)
  optim.validate(config)
  privacy.validate(config.privacy, config.data.batch_size)
  prune.PruneConfig.from_config(config.prune)
  if config.distill.teacher:
    distill.validate(config.distill)
  if devices is not None:
    sharding.mesh_shape(config.mesh.shape, devices)
  _check_batches(config)
  return model_config


def _validate_train_section(train_config) -> None:
  for key in _POSITIVE_TRAIN_KEYS:
    if train_config[key] <= 0:
      raise UsageError(f'train.{key} must be positive, got '
                       f'{train_config[key]}')
  for key, zero_means in (('profile_steps', 'no profile'),
                          ('eval_steps', 'the whole split')):
    if train_config[key] < 0:
      raise UsageError(f'train.{key} must be >= 0 (0: {zero_means}), got '
                       f'{train_config[key]}')


def _check_batches(config: ml_collections.ConfigDict) -> None:
  accum = config.train.grad_accum_steps
  if accum > 1 and config.privacy.dp_sgd:
    raise UsageError('train.grad_accum_steps > 1 with privacy.dp_sgd: '
                     'DP-SGD clips per-example gradients of the whole '
                     'batch already; set train.grad_accum_steps=1')
  if config.data.batch_size % accum:
    raise UsageError(
        f'data.batch_size={config.data.batch_size} is not divisible by '
        f'train.grad_accum_steps={accum}; use a multiple of it')
