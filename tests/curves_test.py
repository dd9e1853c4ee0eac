"""Curves read back from TensorBoard files, and the plot comparing runs."""

import glob
import os
import shutil

import pytest

from lm import curves
from lm import train


def test_the_plot_compares_the_validation_curves_of_two_runs(
    float_workdir, tiny, tmp_path):
  tiny.train.update(num_steps=10, eval_every=5, log_every=5,
                    checkpoint_every=10)
  other = str(tmp_path / 'other')
  final = train.train_and_evaluate(tiny, other)
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
