"""Faults injected into real runs: signals, kills, damaged and unwritable
checkpoints, non-finite steps. Nothing good is lost, and a resumed run
ends where an uninterrupted one does, bit for bit.

LM_KILLS=20 LM_KILL_STEPS=200 runs the kill test at the issue's full size
(CI runs 3 kills in 20 steps).
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lm import restore
from lm.errors import DivergedError
from lm.errors import UsageError
from lm.io import checkpoint
from lm.io import integrity
from lm.io import layout
from lm.io import preemption
from lm.train import loop
from lm.train.trainer import Trainer
from tests.cli_helpers import overrides
from tests.conftest import ROOT
from tests.conftest import tiny_config
from tests.train_test import final_params

pytestmark = pytest.mark.slow


# The child limits the size of the files it writes before it starts the
# script: writes past LM_FILE_LIMIT bytes then fail (EFBIG) as they would on
# a full disk, instead of killing it with SIGXFSZ.
_LIMITED_TRAIN = (
    'import os, resource, runpy, signal\n'
    'limit = int(os.environ["LM_FILE_LIMIT"])\n'
    'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
    'resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n'
    'runpy.run_module("experiments.train", run_name="__main__")\n')


def _start(config, workdir, file_limit=None):
  """experiments/train.py on `config` in a child process, its stdout piped
  line by line."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  script = ['-m', 'experiments.train']
  if file_limit:
    env['LM_FILE_LIMIT'] = str(file_limit)
    script = ['-c', _LIMITED_TRAIN]
  return subprocess.Popen(
      [sys.executable, '-u', *script, *overrides(config),
       f'--workdir={workdir}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _read_until(process, prefix):
  """Reads the child's stdout up to a line starting with `prefix`."""
  for line in process.stdout:
    if line.startswith(prefix):
      return line
  raise AssertionError(f'no line {prefix!r}: {process.stderr.read()[-3000:]}')


def _latest_step(workdir) -> int:
  """The latest complete checkpoint's step, or 0."""
  if not os.path.isdir(layout.checkpoint_dir(workdir)):
    return 0
  latest = checkpoint.Checkpointer(workdir, read_only=True).latest_step()
  return latest or 0


def _with_dropout(config):
  """The tiny config with dropout, so that resuming must also restore the
  dropout RNG (with the data order and the learning-rate schedule)."""
  config.model.dropout_rate = 0.1
  return config


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory):
  """The final params of the tiny config (with dropout) trained without
  interruption."""
  config = _with_dropout(tiny_config(data_dir))
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  loop.train_and_evaluate(config, workdir)
  return final_params(config, workdir)[0]


def _poison(monkeypatch, steps):
  """Makes the batches of `steps` (1-based) carry a NaN weight, so that
  their loss and gradients are NaN."""
  calls = {'n': 0}
  original = Trainer.train_step

  def train_step(self, state, batch):
    calls['n'] += 1
    if calls['n'] in steps:
      batch = dict(batch, weights=np.full_like(batch['weights'], np.nan))
    return original(self, state, batch)

  monkeypatch.setattr(Trainer, 'train_step', train_step)


def test_a_nan_step_leaves_params_and_optimizer_state_as_they_were(tiny):
  trainer = Trainer(tiny)
  batches = iter(trainer.data.train.to_iter_dataset())
  state, _ = trainer.train_step(trainer.init_state(), next(batches))
  before = jax.device_get(state)
  batch = next(batches)
  batch['weights'] = np.full_like(batch['weights'], np.nan)
  after, step_metrics = trainer.train_step(state, batch)
  assert int(step_metrics['skipped']) == 1
  assert int(after.step) == int(before.step) + 1  # The batch is consumed.
  jax.tree.map(np.testing.assert_array_equal,
               (before.params, before.opt_state),
               jax.device_get((after.params, after.opt_state)))


def test_a_nan_gradient_is_skipped_counted_and_the_run_finishes(
    tiny, tmp_path, monkeypatch):
  _poison(monkeypatch, {7})
  lines = []
  final = loop.train_and_evaluate(tiny, str(tmp_path), log=lines.append)
  assert ('step 7: non-finite loss or gradient; update skipped (1 so far)'
          in lines)
  assert any(line.startswith('step 10/20') and '| skipped 1 |' in line
             for line in lines), lines
  assert any(line.startswith('step 20/20') and '| skipped 1 |' in line
             for line in lines), lines
  assert np.isfinite(final['loss'])
  params, step = final_params(tiny, str(tmp_path))
  assert step == 20
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_too_many_nan_steps_in_a_row_stop_the_run(tiny, tmp_path, monkeypatch):
  tiny.train.max_nonfinite_steps = 3
  _poison(monkeypatch, {12, 13, 14})
  with pytest.raises(DivergedError, match=r'steps 12-14 all had a non-finite '
                     r'.*latest checkpoint \(step 10\) holds the last good'):
    loop.train_and_evaluate(tiny, str(tmp_path))
  checkpointer = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert checkpointer.latest_step() == 10
  # The workdir resumes from step 10 once the data is good again.
  monkeypatch.undo()
  lines = []
  loop.train_and_evaluate(tiny, str(tmp_path), log=lines.append)
  assert any('Resuming from the checkpoint at step 10' in l for l in lines)


def _flip_a_byte(path):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory)
           for name in names if name != integrity.MANIFEST]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize('damage', [_flip_a_byte, _truncate, os.remove])
def test_the_integrity_check_finds_damage(tiny, tmp_path, damage):
  trainer = Trainer(tiny, with_data=False)
  checkpointer = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(1, *trainer.init_state().checkpoint_items(), {'a': 1})
  checkpointer.close()
  step_dir = checkpointer.step_dir(1)
  assert integrity.problem(step_dir) is None
  damage(_largest_file(step_dir))
  assert integrity.problem(step_dir)


def _sealed_step(tmp_path) -> str:
  checkpointer = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(1, {'w': np.arange(10.0)}, None, None)
  checkpointer.close()
  assert integrity.problem(checkpointer.step_dir(1)) is None
  return checkpointer.step_dir(1)


def test_deleting_the_checksums_does_not_switch_the_check_off(tmp_path):
  step_dir = _sealed_step(tmp_path)
  os.remove(os.path.join(step_dir, integrity.MANIFEST))
  assert 'missing' in integrity.problem(step_dir)
  # A step never sealed (an older lm's) is taken as it is.
  os.remove(os.path.join(os.path.dirname(step_dir), integrity.SEALED))
  assert integrity.problem(step_dir) is None


@pytest.mark.parametrize('entry', [None, [1], 'abc', [1, 2], ['1', 'x']])
def test_a_malformed_checksum_entry_is_damage_not_a_crash(tmp_path, entry):
  step_dir = _sealed_step(tmp_path)
  path = os.path.join(step_dir, integrity.MANIFEST)
  with open(path) as f:
    manifest = json.load(f)
  manifest[sorted(manifest)[0]] = entry
  with open(path, 'w') as f:
    json.dump(manifest, f)
  assert 'malformed' in integrity.problem(step_dir)


def test_a_manifest_may_only_name_the_step_s_own_files(tmp_path):
  """An emptied manifest checks nothing; one naming a file outside the
  step (any size: a 1 TiB sparse file) would have lm hash it."""
  step_dir = _sealed_step(tmp_path)
  path = os.path.join(step_dir, integrity.MANIFEST)
  with open(path) as f:
    manifest = json.load(f)
  outside = tmp_path / 'huge'
  with open(outside, 'wb') as f:
    f.truncate(1 << 40)  # Sparse: no disk is used.
  os.symlink(outside, os.path.join(step_dir, 'link'))
  for changed, words in (({}, 'lists no files'),
                         ({str(outside): [1 << 40, 'x']}, 'not a file of'),
                         ({'../../huge': [1 << 40, 'x']}, 'not a file of'),
                         ({'link': [1 << 40, 'x']}, 'not a file of')):
    with open(path, 'w') as f:
      json.dump(changed or {}, f)
    started = time.perf_counter()
    assert words in integrity.problem(step_dir), changed
    assert time.perf_counter() - started < 1
  with open(path, 'w') as f:
    json.dump(manifest, f)
  assert integrity.problem(step_dir) is None


@pytest.mark.parametrize('name', [integrity.SEALED, 'preempted.json'])
def test_a_fifo_where_a_small_json_file_goes_does_not_block(tmp_path, name):
  step_dir = _sealed_step(tmp_path)
  os.remove(os.path.join(step_dir, integrity.MANIFEST))
  if name == integrity.SEALED:
    fifo = os.path.join(os.path.dirname(step_dir), name)
    os.remove(fifo)
    os.mkfifo(fifo)
    # The list is damaged: a step without its manifest can no longer be
    # known not to have been sealed.
    assert 'is damaged' in integrity.problem(step_dir)
  else:
    os.mkfifo(tmp_path / name)
    assert preemption.take_marker(str(tmp_path)) == {}  # Still preempted.
    assert not os.path.lexists(tmp_path / name)


def test_params_that_do_not_fit_the_config_are_named(tmp_path):
  _sealed_step(tmp_path)
  checkpointer = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  for abstract, words in (({'w': jax.ShapeDtypeStruct((12,), np.float32)},
                           'w is (10,) in the checkpoint and (12,)'),
                          ({'v': jax.ShapeDtypeStruct((10,), np.float32)},
                           'v is absent in the checkpoint')):
    with pytest.raises(UsageError, match=re.escape(words)):
      checkpointer.restore_params(abstract, 1)


def test_a_folder_lm_did_not_write_is_named_as_such(tmp_path):
  _sealed_step(tmp_path)
  os.makedirs(os.path.join(layout.checkpoint_dir(str(tmp_path)), '7', 'mine'))
  checkpointer = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert checkpointer.latest_step() == 7
  with pytest.raises(UsageError, match='not a checkpoint lm wrote'):
    checkpointer.has_train_state(7)
  assert not checkpointer.has_train_state(1)  # Params alone, as imported.


def test_an_asynchronous_step_is_sealed_without_waiting_for_the_next(
    tmp_path):
  checkpointer = checkpoint.Checkpointer(str(tmp_path))
  checkpointer.save(1, {'w': np.arange(1000.0)}, {'step': np.int32(1)}, {})
  manifest = os.path.join(checkpointer.step_dir(1),
                          integrity.MANIFEST)
  deadline = time.time() + 30
  while not os.path.exists(manifest) and time.time() < deadline:
    time.sleep(0.05)
  assert os.path.exists(manifest)  # Sealed before close() or a next save.
  checkpointer.close()
  assert integrity.problem(checkpointer.step_dir(1)) is None


def test_a_step_is_deleted_only_after_it_is_sealed(tmp_path):
  # orbax deleting a step that was still being sealed failed the next save
  # ("Directory not empty"). Synchronous saves seal in wait(), so the steps
  # stay unsealed until then.
  checkpointer = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1,
                                         async_save=False)
  for step in (1, 2):
    checkpointer.save(step, {'w': np.arange(10.0)}, None, None)
  assert checkpointer._manager.all_steps() == [1, 2]  # pylint: disable=protected-access
  checkpointer.wait()  # Seals 1 and 2.
  checkpointer.save(3, {'w': np.arange(10.0)}, None, None)
  checkpointer.close()
  assert sorted(os.listdir(layout.checkpoint_dir(str(tmp_path)))) == [
      '3', integrity.SEALED]
  assert os.path.exists(os.path.join(checkpointer.step_dir(3),
                                     integrity.MANIFEST))


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    tiny, tmp_path, uninterrupted):
  tiny = _with_dropout(tiny)
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny, workdir)
  step_20 = checkpoint.Checkpointer(workdir, read_only=True).step_dir(20)
  _flip_a_byte(_largest_file(os.path.join(step_20, 'params')))
  # Inference will not quietly use older weights.
  with pytest.raises(UsageError, match='step 20 .* is damaged'):
    restore.workdir(workdir)
  lines = []
  loop.train_and_evaluate(tiny, workdir, log=lines.append)
  assert any(l.startswith('Warning: the checkpoint at step 20 is damaged (')
             for l in lines), lines
  assert any('Resuming from the checkpoint at step 10' in l for l in lines)
  # The damaged step was moved aside, not deleted, and training wrote
  # step 20 again: the same params as the run that was never damaged.
  assert os.path.isdir(os.path.join(workdir, layout.DAMAGED, '20'))
  jax.tree.map(np.testing.assert_array_equal, uninterrupted,
               final_params(tiny, workdir)[0])


def test_sigterm_saves_the_current_step_and_exits_cleanly(tiny, tmp_path):
  tiny.train.update(num_steps=10_000, log_every=1, checkpoint_every=1000,
                    eval_every=1000)
  workdir = str(tmp_path)
  process = _start(tiny, workdir)
  _read_until(process, 'step 3/')
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr
  stopped = [l for l in stdout.splitlines() if l.startswith('Stopped: ')]
  assert len(stopped) == 1 and 'SIGTERM at step' in stopped[0], stdout
  step = int(stopped[0].split('at step ')[1].split(':')[0])
  assert step >= 3
  assert checkpoint.Checkpointer(workdir, read_only=True).latest_step() == step
  assert os.path.exists(os.path.join(workdir, layout.PREEMPTED))
  lines = []
  loop.train_and_evaluate(tiny, workdir, log=lines.append,
                           stop_at_step=step + 1)
  assert (f'Resuming from the checkpoint at step {step} in {workdir} (the '
          f'run stopped on SIGTERM at step {step}).') in lines
  assert not os.path.exists(os.path.join(workdir, layout.PREEMPTED))


def test_random_kills_resume_to_the_uninterrupted_result(tiny, tmp_path,
                                                        uninterrupted):
  tiny = _with_dropout(tiny)
  kills = int(os.environ.get('LM_KILLS', 3))
  steps = int(os.environ.get('LM_KILL_STEPS', tiny.train.num_steps))
  # (Logging and checkpointing more often do not change the params.)
  tiny.train.update(num_steps=steps, log_every=1, checkpoint_every=2,
                    eval_every=steps, keep_checkpoints=2)
  rng = random.Random(0)
  workdir = str(tmp_path / 'killed')
  # Kill points spread over the run: after a step's log line, at once or a
  # moment later (often inside the asynchronous checkpoint write).
  kill_steps = sorted(rng.sample(range(2, steps), kills))
  kills_made = 0
  for kill_step in kill_steps:
    if _latest_step(workdir) >= kill_step:
      continue  # The last kill came late: that run got past this step.
    kills_made += 1
    process = _start(tiny, workdir)
    line = _read_until(process, f'step {kill_step}/')
    time.sleep(rng.choice([0, 0, rng.uniform(0, 0.2)]))
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL, line
  assert kills_made >= min(kills, 2), (kills_made, kill_steps)
  process = _start(tiny, workdir)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert 'Resuming from the checkpoint at step' in stdout
  killed, step = final_params(tiny, workdir)
  assert step == steps
  if steps != 20:  # A longer run than the shared one: train it here.
    straight = str(tmp_path / 'straight')
    loop.train_and_evaluate(tiny, straight)
    uninterrupted = final_params(tiny, straight)[0]
  jax.tree.map(np.testing.assert_array_equal, uninterrupted, killed)


def test_a_failed_save_keeps_the_previous_checkpoint_and_says_so(
    tiny, tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny, workdir, stop_at_step=10)
  step_10 = checkpoint.Checkpointer(workdir, read_only=True).step_dir(10)
  # The embedding table alone (260 x 32 floats) is past the limit, however
  # orbax packs the arrays into files.
  limit = 16 * 1024
  assert tiny.model.vocab_size * tiny.model.d_model * 4 > 2 * limit
  process = _start(tiny, workdir, file_limit=limit)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 2
  # One line, without the tracebacks orbax's failing writers log.
  assert stderr.splitlines() == [
      'error: saving the checkpoint of step 20 failed: [Errno 27] File too '
      'large. The checkpoint of step 10 is kept; free disk space (or fix the '
      'cause) and run again to resume'], stderr[-3000:]
  assert checkpoint.Checkpointer(workdir, read_only=True).latest_step() == 10
  assert integrity.problem(step_10) is None
  lines = []
  loop.train_and_evaluate(tiny, workdir, log=lines.append)
  assert any('Resuming from the checkpoint at step 10' in l for l in lines)
  # Nothing of the failed save is left.
  assert sorted(os.listdir(os.path.dirname(step_10))) == [
      '10', '20', integrity.SEALED]
