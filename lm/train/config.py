"""A training run's whole config, checked before any work: each section by
the module that owns it (a lm/sections.py dataclass: its keys, types and
defaults, from which configs/base.py builds the config), then the rules
that span sections.

  model    lm/model/config.py ModelConfig     data     lm/data/config.py
  (model, data and mesh together: lm/evaluate/evaluator.py, which scoring
  a trained model checks alone)
  optim    lm/train/optim.py                  privacy  lm/train/privacy.py
  prune    lm/compress/prune.py               distill  lm/compress/distill.py
  mesh     lm/sharding.py                     train    here (the run's cadence)
  evaluate lm/evaluate/eval_config.py         sample   lm/train/summaries.py
  bench    lm/perf/bench_config.py

Nothing here reads data or builds a model, so a script refuses a bad config
in one line before it starts (experiments/cli.py), without importing the
training loop.
"""

import dataclasses

import ml_collections

from lm import sections
from lm import sharding
from lm.compress import distill
from lm.compress import prune
from lm.errors import UsageError
from lm.evaluate import evaluator
from lm.evaluate import eval_config
from lm.infer import sampling
from lm.io import layout
from lm.model.config import ModelConfig
from lm.perf import bench_config
from lm.train import optim
from lm.train import privacy
from lm.train import summaries


@dataclasses.dataclass(frozen=True)
class TrainConfig(sections.Section):
  """The run's cadence: steps, logging, evaluation, checkpoints."""

  NAME = 'train'
  num_steps: int = 1000
  seed: int = 0
  log_every: int = 50
  eval_every: int = 500
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  grad_accum_steps: int = 1
  eval_steps: int = 0  # batches per evaluation during training (0: all)
  # Steps traced by jax.profiler into <workdir>/profile, from the third
  # step of the run on (0: none).
  profile_steps: int = 0
  # A step with a non-finite loss or gradient leaves the parameters as
  # they were; this many in a row stop the run (its latest checkpoint
  # holds the last good state).
  max_nonfinite_steps: int = 10
  # Weight histograms in TensorBoard at each evaluation (params/*).
  histograms: bool = False

  def validate(self) -> None:
    self.require(('num_steps', 'log_every', 'eval_every', 'checkpoint_every',
                  'keep_checkpoints', 'max_nonfinite_steps',
                  'grad_accum_steps'), 1)
    if self.num_steps > layout.MAX_STEP:
      raise UsageError(f'train.num_steps={self.num_steps} is more than the '
                       f'{layout.MAX_STEP:,} steps a workdir can hold')
    sampling.check_seed(self.seed, 'train.seed')
    self.require(('profile_steps',), 0, 'no profile')
    self.require(('eval_steps',), 0, 'the whole split')


def validate(config: ml_collections.ConfigDict,
             devices: int | None = None) -> ModelConfig:
  """Raises UsageError naming the first key that is wrong and the fix;
  returns the parsed model section. With `devices`, the mesh must also
  divide that many devices (a multi-process run knows how many only after
  joining, so the Trainer checks it again on its mesh)."""
  model_config = evaluator.validate_model_and_data(config)
  TrainConfig.from_config(config.train)
  optim.validate(config)
  privacy.validate(config.privacy, config.data.batch_size)
  prune.PruneConfig.from_config(config.prune)
  distill.DistillConfig.from_config(config.distill)
  summaries.SampleConfig.from_config(config.sample)
  eval_config.EvaluateConfig.from_config(config.evaluate)
  bench_config.BenchConfig.from_config(config.bench)
  if devices is not None:
    sharding.mesh_shape(config.mesh.shape, devices)
  _check_batches(config)
  return model_config


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
