"""The training run: resume or start, train, evaluate, checkpoint, stop.

`train_and_evaluate(config, workdir)` is the whole run: build the data and
model (lm/train/trainer.py), resume from the workdir's latest good checkpoint
if there is one, train to `config.train.num_steps`, evaluating and
checkpointing on the way, and return the final validation metrics. Log lines
go to the `log` callback (the library prints nothing); scalars and text go to
TensorBoard files in `<workdir>/tensorboard`. A signal saves a checkpoint
and stops the run (lm/io/preemption.py); too many non-finite steps in a row
stop it with the last good state kept.
"""

import contextlib
import os
import signal
from typing import Callable

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from lm import progress as progress_line
from lm import sharding
from lm.errors import DivergedError
from lm.errors import UsageError
from lm.io import checkpoint
from lm.io import config_file
from lm.io import layout
from lm.io import paths
from lm.io import preemption
from lm.io import train_data_file
from lm.io.lock import WorkdirLock
from lm.model.config import COMPUTE_KEYS
from lm.perf import flops
from lm.perf import profile as perf_profile
from lm.train import steps
from lm.train import summaries
from lm.train import trainer as trainer_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       log: Callable[[str], None] = lambda line: None,
                       stop_at_step: int | None = None,
                       progress=None,
                       trainer: trainer_lib.Trainer | None = None
                       ) -> dict[str, float]:
  """Trains (resuming if possible) and returns the final validation metrics.

  `log` gets each line a run reports. `progress` (lm/progress.py's
  `for_output()`) shows a live line of step, loss, tokens/s, MFU and ETA.
  `stop_at_step` ends the run early, as a preemption would, after saving a
  checkpoint at that step; the schedule still targets `train.num_steps`.
  `trainer`, one already built from this same `config` (a notebook's), is
  used with its data and compiled steps instead of building another.
  """
  if config.model.quant != 'none':
    raise UsageError(
        f"model.quant={config.model.quant!r} is an inference format that "
        "experiments/compress.py writes; train with model.quant='none' and "
        'quantize the trained workdir')
  if 'float16' in (config.model.dtype, config.model.param_dtype):
    raise UsageError(
        "model.dtype='float16' trains only with loss scaling, which lm does "
        "not do; use 'bfloat16' (float32's range at half the memory)")
  if trainer is not None and trainer.config is not config:
    raise UsageError('train_and_evaluate(config, trainer=...) needs the '
                     'Trainer built from that config: Trainer(config)')
  if os.path.exists(workdir):
    paths.existing_directory(workdir)
    foreign = layout.foreign_entries(workdir)
    if foreign:  # Someone's folder: lm would write among their files.
      raise UsageError(
          f'{workdir} is not a workdir and not empty (it holds '
          f'{", ".join(foreign[:3])}{", ..." if len(foreign) > 3 else ""}); '
          'train into a new or empty folder')
  else:
    paths.new_directory(workdir, 'workdir')
  if trainer is None:
    trainer = trainer_lib.Trainer(config)
  primary = jax.process_index() == 0
  if not primary:  # One process speaks for all; every one checkpoints.
    log, progress = lambda line: None, None
  elif progress is not None:
    log = _clearing(progress, log)
  os.makedirs(workdir, exist_ok=True)
  # The processes of one multi-process run share the workdir; the first
  # holds the lock for them.
  with (WorkdirLock(workdir) if primary else contextlib.nullcontext()):
    check_workdir_matches(config, workdir)
    try:
      return _train(trainer, config, workdir, log, stop_at_step, progress)
    finally:
      if progress is not None:
        progress.close()


def _clearing(progress, log: Callable[[str], None]
              ) -> Callable[[str], None]:
  """`log`, clearing a terminal's progress line before each line."""

  def log_after_clearing(line: str):
    progress.clear()
    log(line)

  return log_after_clearing


def _train(trainer: trainer_lib.Trainer, config: ml_collections.ConfigDict,
           workdir: str, log: Callable[[str], None], stop_at_step: int | None,
           progress) -> dict[str, float]:
  """The body of train_and_evaluate, in a workdir this run holds."""
  primary = jax.process_index() == 0
  checkpointer = checkpoint.Checkpointer(
      workdir, max_to_keep=config.train.keep_checkpoints)
  # Closing waits for a save in flight, also when the run fails: a good
  # state that was being written is kept.
  with contextlib.closing(checkpointer), preemption.Watch() as watch:
    state, train_iter = _start(trainer, config, workdir, checkpointer, log)
    log(f'Mesh: {sharding.describe(trainer.mesh)}.')
    log(f'Attention: {trainer.attention_kernel()}.')
    if primary:
      config_file.save_config(config, workdir)
      trainer.data.tokenizer.save(workdir)
      train_data_file.save(workdir, config.data.name,
                           trainer.data.train_examples)
    with contextlib.closing(summaries.Writer(workdir, primary)) as writer:
      return _loop(trainer, config, workdir, state, train_iter, checkpointer,
                   writer, watch, log, stop_at_step, progress)


def _start(trainer: trainer_lib.Trainer, config: ml_collections.ConfigDict,
           workdir: str, checkpointer: checkpoint.Checkpointer,
           log: Callable[[str], None]):
  """(state, train iterator): restored from the latest good checkpoint, or
  a new run's."""
  train_iter = iter(trainer.data.train.to_iter_dataset())
  # The first process checks the checksums (and moves damaged steps
  # aside); the others take its word.
  latest = (checkpointer.good_latest_step(log)
            if jax.process_index() == 0 else None)
  if jax.process_count() > 1:
    latest = int(multihost_utils.broadcast_one_to_all(
        np.int32(-1 if latest is None else latest)))
    latest = None if latest < 0 else latest
    checkpointer.reload()
  if latest is not None and not checkpointer.has_train_state(latest):
    raise UsageError(
        f'{workdir} holds imported weights without optimizer state; train '
        f'from them into a new --workdir with --config.init_from={workdir}')
  marker = (preemption.take_marker(workdir) if jax.process_index() == 0
            else None)
  if latest is not None:
    # Restored straight onto this run's mesh, whatever mesh saved it.
    params, rest, data_state = checkpointer.restore(
        latest, *trainer.abstract_state().checkpoint_items())
    state = steps.TrainState(params=params, **rest)
    if data_state is not None:
      train_iter.set_state(data_state)
    log(f'Resuming from the checkpoint at step {latest} in {workdir}'
        + (f' (the run stopped on {marker.get("signal", "a signal")} at step '
           f'{marker.get("step", "?")}).' if marker is not None else '.'))
    return state, train_iter
  log(f'Starting a new run in {workdir}.')
  if config.init_from:
    state, message = trainer.init_from(config.init_from)
    log(message)
    return state, train_iter
  return trainer.init_state(), train_iter


def _loop(trainer: trainer_lib.Trainer, config: ml_collections.ConfigDict,
          workdir: str, state: steps.TrainState, train_iter,
          checkpointer: checkpoint.Checkpointer, writer: summaries.Writer,
          watch: preemption.Watch, log: Callable[[str], None],
          stop_at_step: int | None, progress) -> dict[str, float]:
  """Steps from the state's to the end: logging, evaluating, checkpointing;
  the final validation metrics."""
  train_config = config.train
  num_steps = train_config.num_steps
  if stop_at_step is not None:
    num_steps = min(num_steps, stop_at_step)
  step = int(state.step)
  saved_step = step  # A resumed run's state is on disk already.
  tokens_per_step = config.data.batch_size * config.data.seq_len
  # Model FLOPs utilization (lm/perf/flops.py), against the datasheet peak
  # where the device has one, else this process's measured matmul peak.
  flops_per_token = trainer.flops_per_token()
  peak = flops.Peak.for_run(trainer.model_config.dtype)
  profile = None
  if train_config.profile_steps:
    profile = perf_profile.Profile(os.path.join(workdir, layout.PROFILE),
                                   step + 2, train_config.profile_steps)
  meter = progress_line.Throughput(step, tokens_per_step, num_steps)
  skipped = _SkippedSteps(train_config.max_nonfinite_steps,
                          checkpointer, log)
  tracker = progress and progress_line.Tracker(
      progress, train_config.num_steps, tokens_per_step, flops_per_token,
      peak)
  sample = summaries.eval_sampler(config, trainer.model_config,
                                  trainer.data.tokenizer)
  final = previous = None
  while step < num_steps:
    if profile:
      profile.before(step)
    state, step_metrics = trainer.train_step(state, next(train_iter))
    step += 1
    skipped.push(step, step_metrics['skipped'])
    if tracker and previous is not None and tracker.due():
      # The step before has finished (its flag was just read), so this
      # costs no wait, and the device is busy with the new one meanwhile.
      tracker.finished(step - 1, float(previous['loss']))
    previous = step_metrics
    if profile:
      profile.after(step, step_metrics, log)
    is_last = step == num_steps
    if step % train_config.log_every == 0 or is_last:
      step_metrics = jax.device_get(step_metrics)
      skipped.flush()
      tokens_per_s, eta_s = meter.update(step)
      mfu = peak.mfu(tokens_per_s * flops_per_token)
      news = peak.take_news()
      if news:
        log(news)
      step_metrics['skipped'] = skipped.total  # In all, not this step's.
      if tracker:  # (The metrics are here already: no wait.)
        tracker.finished(step, float(step_metrics['loss']))
      writer.scalars('train', dict(
          step_metrics, tokens_per_s=tokens_per_s, mfu=mfu,
          param_norm=float(summaries.param_norm(state.params))), step)
      log(_log_line(step, train_config.num_steps, step_metrics, tokens_per_s,
                    mfu, eta_s))
    if step % train_config.eval_every == 0 or is_last:
      final = _evaluate(trainer, state, step, sample, writer, log)
      meter.pause()
      if tracker:
        tracker.pause()
    signal_name = _stop_requested(watch, step, train_config.log_every)
    if step % train_config.checkpoint_every == 0 or is_last or (
        signal_name and saved_step != step):
      skipped.flush()
      checkpointer.save(step, *state.checkpoint_items(),
                        train_iter.get_state())
      saved_step = step
    if signal_name and not is_last:
      checkpointer.wait()
      if jax.process_index() == 0:
        preemption.write_marker(workdir, step, signal_name)
      raise preemption.Preempted(step, signal_name, workdir)
  skipped.flush()
  if profile:
    profile.stop(log)
  if final is None:  # Nothing left to train: report on what was restored.
    final = trainer.evaluate(state.params)
  return final


def _log_line(step: int, num_steps: int, step_metrics: dict,
              tokens_per_s: float, mfu: float, eta_s: float) -> str:
  """'step 50/450 | loss 3.1415 | lr ... | ETA 4m 10s'."""
  fields = [f'step {step}/{num_steps}', f'loss {step_metrics["loss"]:.4f}',
            f'lr {step_metrics["learning_rate"]:.2e}',
            f'grad_norm {step_metrics["grad_norm"]:.3f}']
  if 'router_loss' in step_metrics:
    fields += [f'router_loss {step_metrics["router_loss"]:.4f}',
               f'expert_load_max {step_metrics["expert_load_max"]:.2f}']
  if 'soft_loss' in step_metrics:
    fields.append(f'soft_loss {step_metrics["soft_loss"]:.4f}')
  if step_metrics['skipped']:
    fields.append(f'skipped {step_metrics["skipped"]}')
  fields += [f'{tokens_per_s:,.0f} tokens/s', f'MFU {mfu:.1%}',
             f'ETA {progress_line.format_seconds(eta_s)}']
  return ' | '.join(fields)


def _evaluate(trainer: trainer_lib.Trainer, state: steps.TrainState,
              step: int, sample, writer: summaries.Writer,
              log: Callable[[str], None]) -> dict[str, float]:
  """The validation metrics at `step`, logged with samples, histograms and
  the privacy spent so far, as the config asks."""
  metrics = trainer.evaluate(state.params)
  writer.scalars('eval', metrics, step)
  log(f'eval at step {step}: ' + ' '.join(
      f'val_{k}={v:.4f}' for k, v in metrics.items()))
  if sample:
    texts = sample(state.params)
    writer.texts('samples', texts, step)
    for text in texts:
      log(f'--- sample at step {step} ---\n{text}')
  if trainer.config.train.histograms:
    writer.histograms(state.params, step)
  spent = trainer.privacy_spent(step)
  if spent:
    writer.scalars('privacy', {'epsilon': spent['epsilon']}, step)
    log(f'DP-SGD at step {step}: epsilon={spent["epsilon"]:.3f} '
        f'delta={spent["delta"]:.2e} (noise multiplier '
        f'{spent["noise_multiplier"]}, clip {spent["l2_clip"]})')
  return metrics


def _stop_requested(watch: preemption.Watch, step: int,
                    every: int) -> str | None:
  """The signal that asks this run to stop now, if any. The processes of a
  multi-process run agree at log steps (a collective), so that all save
  the same step."""
  if jax.process_count() == 1:
    return watch.signal_name
  if step % every:
    return None
  names = multihost_utils.process_allgather(
      np.int32(signal.Signals[watch.signal_name] if watch.signal_name else 0))
  numbers = [int(n) for n in np.ravel(names) if n]
  return signal.Signals(numbers[0]).name if numbers else None


class _SkippedSteps:
  """Counts the steps whose update was skipped for a non-finite loss or
  gradient, and stops the run after `limit` in a row. Each step's flag is
  read one step late, when the next step is queued, so that reading it
  never leaves the device idle."""

  def __init__(self, limit: int, checkpointer: checkpoint.Checkpointer,
               log: Callable[[str], None]):
    self.limit, self.checkpointer, self.log = limit, checkpointer, log
    self.total, self.in_a_row = 0, 0
    self.pending = []  # (step, flag on the device)

  def push(self, step: int, flag: jax.Array):
    self.pending.append((step, flag))
    if len(self.pending) > 1:
      self._count(*self.pending.pop(0))

  def flush(self):
    while self.pending:
      self._count(*self.pending.pop(0))

  def _count(self, step: int, flag):
    if not bool(flag):
      self.in_a_row = 0
      return
    self.total += 1
    self.in_a_row += 1
    self.log(f'step {step}: non-finite loss or gradient; update skipped '
             f'({self.total} so far)')
    if self.in_a_row >= self.limit:
      self.checkpointer.wait()
      kept = self.checkpointer.latest_step()
      raise DivergedError(
          f'steps {step - self.in_a_row + 1}-{step} all had a non-finite '
          'loss or gradient (train.max_nonfinite_steps='
          f'{self.limit}); stopped. Their updates were skipped, so the '
          'latest checkpoint'
          + (f' (step {kept})' if kept is not None else '')
          + ' holds the last good state; lower optim.learning_rate or check '
          'the data, then run again to resume from it')


# Keys whose change makes a workdir's checkpoints meaningless to resume
# (None: every key of the section but those that only change computation).
_RESUME_KEYS = {'model': None, 'data': ('name', 'tokenizer', 'vocab_size',
                                        'seq_len', 'batch_size', 'objective'),
                # Pruning keeps masks in the optimizer state.
                'prune': ('pattern',)}


def check_workdir_matches(config: ml_collections.ConfigDict, workdir: str):
  """Refuses to resume a workdir trained with another model or data."""
  if not os.path.exists(layout.config_path(workdir)):
    return
  saved = config_file.load_config(workdir)
  for section, keys in _RESUME_KEYS.items():
    if section not in saved:  # Written before lm had the section.
      continue
    old, new = saved[section].to_dict(), config[section].to_dict()
    keys = keys or sorted((set(old) | set(new)) - set(COMPUTE_KEYS))
    for key in keys:
      # A key the saved config lacks was added to lm later, with a default
      # that keeps the old behaviour. config.json holds lists where the
      # config has tuples.
      if key in old and _as_saved(old[key]) != _as_saved(new.get(key)):
        raise UsageError(
            f'{workdir} was trained with {section}.{key}={old.get(key)!r}, '
            f'not {new.get(key)!r}; use a new --workdir or the old value')


def _as_saved(value):
  return list(value) if isinstance(value, tuple) else value
