"""Defaults shared by every config: every section's keys and defaults, as
the module that owns the section states them (lm/sections.py dataclasses).

Not a job by itself: presets start from `get_base_config()` and set the model.
Every key a run can take appears here, so overrides of unknown keys fail.
docs/configs.md lists them with what each means.
"""

from lm import sharding
from lm.compress import distill
from lm.compress import prune
from lm.data import config as data_config
from lm.evaluate import eval_config
from lm.model import config as model_config
from lm.perf import bench_config
from lm.train import config as train_config
from lm.train import optim
from lm.train import privacy
from lm.train import summaries

import ml_collections

# Each section's keys, in the order docs/configs.md lists them.
SECTIONS = {
    'model': model_config.ModelConfig,
    'data': data_config.DataConfig,
    'optim': optim.OptimConfig,
    'prune': prune.PruneConfig,
    'distill': distill.DistillConfig,
    'train': train_config.TrainConfig,
    'mesh': sharding.MeshConfig,
    'privacy': privacy.PrivacyConfig,
    'evaluate': eval_config.EvaluateConfig,
    'bench': bench_config.BenchConfig,
    'sample': summaries.SampleConfig,
}


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
      {name: section().to_dict() for name, section in SECTIONS.items()})
  # A workdir (trained or imported) whose params start this run; parameters
  # the model has and it lacks (a classification head) start fresh.
  config.init_from = ''
  return config
