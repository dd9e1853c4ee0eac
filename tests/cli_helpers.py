"""Running the scripts as a user does, and checking how they fail."""

import json
import os
import subprocess
import sys
import tempfile

import ml_collections

from tests.conftest import ROOT


def run(module, *args, hidden=(), env=None):
  """`python -m module args`; the packages named in `hidden` fail to import
  (as where they are not installed); `env` adds environment variables."""
  with tempfile.TemporaryDirectory(prefix='lm-hidden-') as folder:
    for name in hidden:
      os.makedirs(os.path.join(folder, name))
      with open(os.path.join(folder, name, '__init__.py'), 'w',
                encoding='utf-8') as f:
        f.write(f'raise ImportError("{name} is hidden by the test")\n')
    path = os.pathsep.join(([folder] if hidden else []) + [ROOT])
    return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=path,
                                   **(env or {})),
                          capture_output=True, text=True, timeout=600)


def flat_overrides(config) -> dict:
  """{'section.key': value} of the config's plain values, the sections a
  test shrinks (a notebook's `overrides` parameter takes these)."""
  return {f'{section}.{key}': value
          for section in ('model', 'data', 'optim', 'train', 'sample',
                          'evaluate')
          for key, value in config[section].items()
          if not isinstance(value, (tuple, ml_collections.ConfigDict))}


def overrides(config):
  """The tiny test config as --config.* flags on top of configs/default.py."""
  return ['--config=configs/default.py'] + [
      f'--config.{key}={value}' for key, value in flat_overrides(config).items()]


def snapshot(directory):
  """Every file under a directory with its size and modification time
  (not its access time, which reading changes)."""
  stats = {os.path.join(root, name): os.lstat(os.path.join(root, name))
           for root, _, names in os.walk(directory) for name in names}
  return {path: (stat.st_size, stat.st_mtime_ns)
          for path, stat in stats.items()}


def run_cases(cases, memory_limit: int | None = None):
  """tests/fuzz_runner.py on {script: [argv, ...]} (or [[script, argv],
  ...]): its results. `memory_limit` caps the runner's address space in
  bytes, so a case that would take more fails to allocate instead."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  if memory_limit:
    env['LM_FUZZ_MEMORY'] = str(memory_limit)
  result = subprocess.run(
      [sys.executable, '-m', 'tests.fuzz_runner'], cwd=ROOT,
      input=json.dumps(cases), capture_output=True, text=True, timeout=1500,
      env=env)
  assert result.returncode == 0, result.stderr[-5000:]
  return json.loads(result.stdout)
