"""Two processes x 4 CPU devices train like one process with 8 devices.

The processes join through jax.distributed on 127.0.0.1 (gloo collectives),
each reads its rows of every batch, and they write one checkpoint together.
"""

import os
import re
import socket
import subprocess
import sys

import pytest

from lm.evaluate import curves
from tests.conftest import ROOT

# The default config's data with bytes for tokens and a smaller model, so
# that three processes start, compile and train quickly.
_OVERRIDES = ('--config.data.tokenizer=byte', '--config.model.vocab_size=260',
              '--config.model.d_model=64', '--config.model.num_layers=2',
              '--config.model.d_ff=128',
              '--config.train.num_steps=10', '--config.optim.warmup_steps=3',
              '--config.train.log_every=5',
              '--config.train.eval_every=10',
              '--config.train.checkpoint_every=10',
              '--config.data.batch_size=16', '--config.data.seq_len=64',
              '--config.data.eval_batch_size=256', '--config.train.eval_steps=4',
              '--config.sample.prompts=()',
              # Gathered from both processes' shards onto the first.
              '--config.train.histograms=True')


def _command(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'experiments.train',
          '--config=configs/default.py', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', *_OVERRIDES, *extra]


def _env(devices):
  return dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '') +
              f' --xla_force_host_platform_device_count={devices}')


def _losses(output):
  """Train losses by step, and the final validation loss."""
  train = {int(s): float(l) for s, l in re.findall(
      r'step (\d+)/\d+ \| loss ([\d.]+)', output)}
  return train, float(re.search(r'final: val_loss=([\d.]+)', output)[1])


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(data_dir, tmp_path):
  # One process with 8 devices first: it also builds the tokenizer.
  single = subprocess.run(_command(data_dir, tmp_path / 'single'), cwd=ROOT,
                          env=_env(8), capture_output=True, text=True,
                          timeout=900, check=False)
  assert single.returncode == 0, single.stderr[-3000:]
  address = f'127.0.0.1:{_free_port()}'
  processes = [subprocess.Popen(
      _command(data_dir, tmp_path / 'multi', f'--coordinator_address={address}',
               '--num_processes=2', f'--process_id={i}'),
      cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  lead = outputs[0][0]
  assert 'data=8' in lead and '2 processes' in lead, lead[:3000]
  assert 'step' not in outputs[1][0]  # Only the first process logs.
  train_single, final_single = _losses(single.stdout)
  train_multi, final_multi = _losses(lead)
  assert sorted(train_multi) == [5, 10]
  # Equal up to the log's 4 decimals (and float rounding).
  for step, loss in train_single.items():
    assert abs(train_multi[step] - loss) <= 2e-4, (step, loss)
  assert abs(final_multi - final_single) <= 2e-4
  # Both processes wrote their shards of one checkpoint.
  assert os.path.isdir(tmp_path / 'multi' / 'checkpoints' / '10')
  # The first process wrote TensorBoard for both, histograms included.
  single_events = curves.read_events(str(tmp_path / 'single'))
  multi_events = curves.read_events(str(tmp_path / 'multi'))
  assert multi_events.histograms == single_events.histograms
  assert multi_events.histograms and all(
      steps[0][0] == 10 for steps in multi_events.histograms.values())
  assert multi_events.scalars['train/param_norm'][-1][1] == pytest.approx(
      single_events.scalars['train/param_norm'][-1][1], rel=1e-5)
