"""What a run writes to TensorBoard, read back; the plot comparing runs."""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys

import flax.traverse_util
import numpy as np
import optax
import pytest

from lm import restore
from lm.evaluate import curves
from lm.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_plot_compares_the_validation_curves_of_two_runs(
    float_workdir, tiny, tmp_path):
  tiny.train.update(num_steps=10, eval_every=5, log_every=5,
                    checkpoint_every=10)
  other = str(tmp_path / 'other')
  final = loop.train_and_evaluate(tiny, other)
  scalars = curves.read_scalars(other)
  assert [step for step, _ in scalars['eval/bits_per_byte']] == [5, 10]
  # (TensorBoard stores float32.)
  assert scalars['eval/bits_per_byte'][-1][1] == pytest.approx(
      final['bits_per_byte'], rel=1e-6)
  assert [step for step, _ in scalars['train/loss']] == [5, 10]
  out = tmp_path / 'curves.png'
  curves.plot_runs([float_workdir, other], ['wide', 'narrow'],
                   ['eval/bits_per_byte', 'train/loss'], str(out))
  assert out.stat().st_size > 10_000


def test_a_file_cut_short_is_read_to_its_last_whole_record(float_workdir,
                                                           tmp_path):
  workdir = str(tmp_path / 'cut')
  shutil.copytree(float_workdir, workdir)
  whole = curves.read_scalars(workdir)
  (path,) = glob.glob(os.path.join(workdir, 'tensorboard', 'events.*'))
  os.truncate(path, os.path.getsize(path) - 7)
  cut = curves.read_scalars(workdir)
  assert set(cut) <= set(whole)
  assert sum(map(len, cut.values())) == sum(map(len, whole.values())) - 1


@pytest.mark.slow
def test_tensorboard_holds_scalars_samples_and_histograms(tiny, tmp_path):
  tiny.train.update(num_steps=10, eval_every=5, log_every=5,
                    checkpoint_every=10, histograms=True)
  tiny.sample.at_eval = True
  workdir = str(tmp_path / 'run')
  lines = []
  loop.train_and_evaluate(tiny, workdir, log=lines.append)
  events = curves.read_events(workdir)
  for name in ('loss', 'token_accuracy', 'grad_norm', 'learning_rate',
               'skipped', 'param_norm', 'tokens_per_s', 'mfu'):
    assert [s for s, _ in events.scalars[f'train/{name}']] == [5, 10], name
  assert [s for s, _ in events.scalars['eval/bits_per_byte']] == [5, 10]
  restored = restore.workdir(workdir)
  assert events.scalars['train/param_norm'][-1][1] == pytest.approx(
      float(optax.tree.norm(restored.params)), rel=1e-6)
  # Each prompt's sample at each evaluation, as the log printed it.
  assert sorted(events.texts) == ['samples/0', 'samples/1']
  for tag, prompt in zip(sorted(events.texts), tiny.sample.prompts):
    assert [s for s, _ in events.texts[tag]] == [5, 10]
    for step, text in events.texts[tag]:
      assert text.startswith(prompt) and len(text) > len(prompt)
      assert f'--- sample at step {step} ---\n{text}' in lines
  flat = flax.traverse_util.flatten_dict(restored.params, sep='/')
  assert set(events.histograms) == {f'params/{name}' for name in flat}
  for name, value in flat.items():
    assert events.histograms[f'params/{name}'] == [(5, np.size(value)),
                                                   (10, np.size(value))]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                    reason='torch is not installed, so nothing hides it')
def test_tensorboard_files_are_written_and_read_without_importing_torch(
    tmp_path):
  # tensorboardX imports torch (3 s) when it can; lm/io/tensorboardx.py
  # keeps it from doing so in a process that has not loaded torch itself.
  code = ('import sys\n'
          'from lm.evaluate import curves\n'
          'from lm.train import summaries\n'
          'writer = summaries.Writer(sys.argv[1])\n'
          "writer.scalars('train', {'loss': 2.5}, 3)\n"
          'writer.close()\n'
          "assert 'torch' not in sys.modules, 'torch was imported'\n"
          "print(curves.read_scalars(sys.argv[1])['train/loss'])\n")
  result = subprocess.run([sys.executable, '-c', code, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[(3, 2.5)]'
