"""Every file and folder a workdir holds, named once.

  config.json              the run's whole config (CONFIG)
  checkpoints/<step>/      orbax steps: params, state, data (CHECKPOINTS)
    lm_checksums.json      each sealed step's SHA-256 manifest (CHECKSUMS)
  checkpoints/lm_sealed_steps.json   the steps that were sealed (SEALED_STEPS)
  damaged_checkpoints/     steps whose checksums failed, moved aside (DAMAGED)
  tensorboard/             event files of scalars, samples, histograms
  eval/<dataset>_<split>.json   experiments/evaluate.py's results
  profile/                 jax.profiler traces (train.profile_steps)
  tokenizer.model | tokenizer.json (+ tokenizer_config.json)   the tokenizer
  deep_compression.npz     a Deep-Compressed workdir's encoded params
  preempted.json           where a run stopped on a signal
  train_data.json          how many train examples the run read (TRAIN_DATA)
  .lock                    held by the run that trains in the workdir

and, while an output is built beside its final name (lm/io/outputs.py):

  <output>.partial-<pid>/.lm-partial   marks the folder as lm's to delete
"""

import os

CONFIG = 'config.json'
CHECKPOINTS = 'checkpoints'
CHECKSUMS = 'lm_checksums.json'
SEALED_STEPS = 'lm_sealed_steps.json'
DAMAGED = 'damaged_checkpoints'
TENSORBOARD = 'tensorboard'
EVAL = 'eval'
PROFILE = 'profile'
SENTENCEPIECE_TOKENIZER = 'tokenizer.model'
# A byte-level tokenizer's marker, or a Hugging Face tokenizer.json.
JSON_TOKENIZER = 'tokenizer.json'
HF_TOKENIZER_CONFIG = 'tokenizer_config.json'
DEEP_COMPRESSION = 'deep_compression.npz'
PREEMPTED = 'preempted.json'
TRAIN_DATA = 'train_data.json'
LOCK = '.lock'
# Step folders are named by their step; a larger number is no run's step
# (a folder named 99999999999999999999 would otherwise be the latest).
MAX_STEP = 10**12
PARTIAL = '.lm-partial'


# Everything lm writes at a workdir's top level.
NAMES = frozenset((CONFIG, CHECKPOINTS, DAMAGED, TENSORBOARD, EVAL, PROFILE,
                   SENTENCEPIECE_TOKENIZER, JSON_TOKENIZER,
                   HF_TOKENIZER_CONFIG, DEEP_COMPRESSION, PREEMPTED,
                   TRAIN_DATA, LOCK))


def foreign_entries(workdir: str) -> list[str]:
  """What in an existing folder keeps lm from making it a workdir: nothing
  if it holds a config.json (it is a workdir; the config is checked
  against the run's) or only names lm writes (a first run that stopped
  early), else the names lm did not write."""
  names = os.listdir(workdir)
  if CONFIG in names:
    return []
  return sorted(set(names) - NAMES)


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def damaged_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), DAMAGED)


def eval_path(workdir: str, dataset: str, split: str) -> str:
  return os.path.join(workdir, EVAL, f'{dataset}_{split}.json')
