"""The README's commands run as written: its cheap ones, here, against a
small model trained in the default model's shape; its claims of figures
and length hold."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from lm.convert import packaged
from lm.train import loop
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
PYTHON = '.venv/bin/python -m experiments.'
# Scripts that train or time for minutes: their commands run in
# tests/scripts_test.py and the reliability tests on small configs instead.
EXPENSIVE = ('train', 'benchmark', 'torch_peer', 'kernel_peers')
# The 135M-parameter SmolLM2 is imported and chatted with in
# tests/real_weights_test.py.
SLOW_SOURCES = ('smollm2',)


def readme_commands() -> list[str]:
  """Every `.venv/bin/python -m experiments.X ...` line of the README's code
  blocks, continuation lines joined."""
  with open(README, encoding='utf-8') as f:
    text = f.read()
  commands = []
  for block in re.findall(r'```[a-z]*\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split('  #')[0].strip()
      if line.startswith(PYTHON):
        commands.append(' '.join(line.split()))
  return commands


def _cheap(command: str) -> bool:
  script = command[len(PYTHON):].split()[0]
  return script not in EXPENSIVE and not any(
      name in command for name in SLOW_SOURCES)


def test_the_readme_is_short_and_its_paths_are_portable():
  with open(README, encoding='utf-8') as f:
    text = f.read()
  assert len(text.splitlines()) <= 250
  assert 'python3.' not in text
  assert '<!--' not in text, 'a figure was left to fill in'


def test_the_readme_shows_commands_of_every_kind():
  scripts = {command[len(PYTHON):].split()[0]
             for command in readme_commands()}
  assert {'generate', 'evaluate', 'compress', 'export', 'convert', 'embed',
          'train'} <= scripts, scripts


@pytest.mark.slow
def test_the_readme_commands_run_as_written(data_dir, tmp_path):
  config = tiny_config(data_dir)
  # The default model's shape (plain multi-head attention, so that it
  # exports as GPT-2), small.
  config.model.update(num_kv_heads=0, max_len=128)
  config.train.update(num_steps=10, eval_every=10, checkpoint_every=10)
  workdirs = tmp_path / 'workdirs'
  loop.train_and_evaluate(config, str(workdirs / 'default'))

  cases = []
  for command in filter(_cheap, readme_commands()):
    for name in packaged.CHECKPOINTS:
      command = command.replace(f'$({PYTHON}weights {name})',
                                packaged.path(name))
    command = command.replace('workdirs/', f'{workdirs}/')
    script, *argv = shlex.split(command[len(PYTHON):])
    cases.append([f'experiments.{script}', argv])
  cases.append(['experiments.weights', ['minilm']])
  result = subprocess.run(
      [sys.executable, '-m', 'tests.fuzz_runner'], cwd=ROOT,
      input=json.dumps(cases), capture_output=True, text=True, timeout=1500,
      env=dict(os.environ, PYTHONPATH=ROOT, LM_FUZZ_SECONDS='600'))
  assert result.returncode == 0, result.stderr[-5000:]
  runs = json.loads(result.stdout)
  for (script, argv), run in zip(cases, runs):
    assert run['crash'] is None and run['code'] == 0, (
        script, argv, run['stderr'][-2000:], run['crash'])
  outputs = {script: run['stdout'] for (script, _), run in zip(cases, runs)}
  assert 'ROMEO:' in outputs['experiments.generate']
  assert 'bits_per_byte' in outputs['experiments.evaluate']
  assert '| int8 |' in outputs['experiments.compress']
  assert outputs['experiments.weights'].strip() == packaged.path('minilm')
  assert os.path.exists(workdirs / 'default_hf' / 'model.safetensors')
  assert os.path.isdir(workdirs / 'minilm' / 'checkpoints')
