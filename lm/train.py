"""Training: TrainState, train_step, eval_step and the loop.

`train_and_evaluate(config, workdir)` is the whole run: build the data and
model, resume from the workdir's latest checkpoint if there is one, train to
`config.train.num_steps`, evaluating and checkpointing on the way, and
return the final validation metrics. Log lines go to the `log` callback
(the library prints nothing); scalars and text go to TensorBoard files in
`<workdir>/tensorboard`.
"""

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorboardX

from lm import checkpoint
from lm import metrics
from lm import models
from lm import optim
from lm import privacy
from lm.data import classification
from lm.data import objectives
from lm.data import pipeline
from lm.data import text_pairs
from lm.errors import UsageError

@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The RNG is a raw uint32 key (serializable)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  def checkpoint_items(self):
    return self.params, {'step': self.step, 'opt_state': self.opt_state,
                         'rng': self.rng}


# ----------------------------------------------------------------- steps ----


def batch_sums(model, params, batch, token_bytes_V=None, **kwargs):
  """Loss sums of one batch: per target token for the language-modelling
  objectives, per sequence for classification (batches with a 'label')."""
  outputs = model.apply({'params': params},
                        **models.model_inputs(model, batch), **kwargs)
  if 'label' in batch:
    return metrics.classification_sums(outputs, batch['label'],
                                       batch['weights'])
  return metrics.lm_sums(outputs, batch['targets'], batch['weights'],
                         token_bytes_V)


def train_step(state: TrainState, batch, *, model, optimizer, schedule,
               per_example: bool = False):
  """One optimizer update on a batch (see lm/data: pipeline, classification).

  With `per_example` the optimizer gets one gradient per example (a leading
  batch axis), as DP-SGD's aggregation (lm/privacy.py) needs.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, batch, rng):
    sums = batch_sums(model, params, batch, deterministic=False,
                      rngs={'dropout': rng})
    count = jnp.maximum(sums['tokens'], 1.0)
    return sums['nll'] / count, sums['correct'] / count

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if per_example:
    def example_grad(example, index):
      return grad_fn(state.params, jax.tree.map(lambda x: x[None], example),
                     jax.random.fold_in(dropout_rng, index))

    (losses, accuracies), grads = jax.vmap(example_grad)(
        batch, jnp.arange(len(batch['weights'])))
    loss, accuracy = jnp.mean(losses), jnp.mean(accuracies)
    grad_norm = optax.tree.norm(jax.tree.map(lambda g: g.mean(0), grads))
  else:
    (loss, accuracy), grads = grad_fn(state.params, batch, dropout_rng)
    grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = {'loss': loss, 'token_accuracy': accuracy,
                  'grad_norm': grad_norm,
                  'learning_rate': schedule(state.step)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), step_metrics


def eval_step(params, batch, token_bytes_V, *, model):
  return batch_sums(model, params, batch, token_bytes_V)


def evaluate_sums(eval_fn, params, batches, token_bytes_V) -> dict:
  """The metric sums over all `batches` (see metrics.summarize)."""
  totals = None
  for batch in batches:
    sums = eval_fn(params, batch, token_bytes_V)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise UsageError('the evaluation split produced no batches')
  return jax.device_get(totals)


def evaluate(eval_fn, params, batches, token_bytes_V) -> dict[str, float]:
  """metrics.summarize of the sums over all `batches`."""
  return metrics.summarize(evaluate_sums(eval_fn, params, batches,
                                         token_bytes_V))


# ------------------------------------------------------------- the run -----


# Model keys fine-tuning may change: heads and regularization.
_HEAD_KEYS = ('num_classes', 'pooling', 'pooler', 'mlm_head', 'dropout_rate',
              'dtype')


class Trainer:
  """Model, optimizer, compiled steps and the data of one config."""

  def __init__(self, config: ml_collections.ConfigDict):
    validate_train_config(config)
    self.config = config
    self.model_config = models.ModelConfig.from_config(config.model)
    self.model = models.build_model(self.model_config)
    longest = max(config.data.seq_len, config.data.target_len)
    limit = self.model_config.context_limit
    if limit is not None and longest > limit:
      raise UsageError(
          f'data.seq_len/target_len ({longest} tokens) exceed model.max_len='
          f'{limit}, the size of the learned position table; raise '
          'model.max_len or shorten the data')
    if config.data.objective == 'classify':
      self.data = classification.make_classification_data(config.data)
      self._check_classifier()
    elif config.data.objective in text_pairs.FAMILY_OF:
      self._check_family(text_pairs.FAMILY_OF[config.data.objective])
      self.data = text_pairs.make_text_pair_data(config.data)
      self._check_vocab(0)
    else:
      self.data = pipeline.make_lm_data(config.data)
      self._check_language_model()
    self.schedule = optim.make_schedule(config.optim, config.train.num_steps)
    self.optimizer = optim.make_optimizer(config.optim, self.schedule)
    if config.privacy.dp_sgd:
      self.optimizer = optax.chain(
          privacy.aggregator(config.privacy, config.train.seed),
          self.optimizer)
    self.train_step = jax.jit(
        functools.partial(train_step, model=self.model,
                          optimizer=self.optimizer, schedule=self.schedule,
                          per_example=config.privacy.dp_sgd),
        donate_argnums=0)
    self.eval_step = jax.jit(functools.partial(eval_step, model=self.model))
    # Ids past the tokenizer's ([MASK], sentinels) stand for no text.
    self.token_bytes = jnp.zeros(self.model_config.vocab_size, jnp.int32).at[
        :len(self.data.token_bytes)].set(self.data.token_bytes)

  def _check_classifier(self):
    names = self.data.class_names
    if self.model_config.num_classes != len(names):
      raise UsageError(
          f'dataset {self.config.data.name!r} has {len(names)} classes '
          f'({", ".join(names)}) but model.num_classes='
          f'{self.model_config.num_classes}; set it to {len(names)}')
    self._check_vocab(0)

  def _check_vocab(self, extra_ids: int):
    needed = self.data.tokenizer.vocab_size + extra_ids
    if needed > self.model_config.vocab_size:
      raise UsageError(
          f'the tokenizer has {self.data.tokenizer.vocab_size} tokens'
          + (f' and data.objective={self.config.data.objective!r} adds '
             f'{extra_ids}' if extra_ids else '')
          + f', but model.vocab_size={self.model_config.vocab_size}; raise it '
          f'to at least {needed}')

  def _check_family(self, family: str):
    objective = self.config.data.objective
    if self.model_config.num_classes:
      raise UsageError(f'model.num_classes={self.model_config.num_classes} '
                       'makes a classifier; train it with '
                       "data.objective='classify'")
    if self.model_config.family != family:
      raise UsageError(
          f'data.objective={objective!r} trains {family} models, but '
          f'model.family={self.model_config.family!r}')

  def _check_language_model(self):
    objective = self.data.objective
    self._check_family(objectives.FAMILY_OF[objective.name])
    if objective.name == 'masked' and not self.model_config.mlm_head:
      raise UsageError('data.objective=masked needs model.mlm_head=True')
    self._check_vocab(objective.extra_ids)

  def init_state(self, params=None) -> TrainState:
    """Step 0: fresh parameters, or `params` (e.g. from init_from)."""
    init_rng, rng = self._init_rngs()

    @jax.jit
    def init(init_rng, rng, params):
      if params is None:
        params = models.init_params(self.model, init_rng)
      return TrainState(step=jnp.int32(0), params=params,
                        opt_state=self.optimizer.init(params), rng=rng)

    return init(init_rng, rng, params)

  def _init_rngs(self):
    """(parameter-init key, training key), both from train.seed."""
    return jax.random.split(jax.random.PRNGKey(self.config.train.seed))

  def init_from(self, workdir: str) -> tuple[TrainState, str]:
    """Step 0 with the params of another workdir (trained or imported).

    Parameters the two models share by name take the other workdir's
    values; the rest (a new classification head, say) start fresh. A shared
    name of another shape means another architecture, and is refused.
    """
    restored = checkpoint.restore(workdir)
    if restored.model_config.family != self.model_config.family:
      raise UsageError(
          f'init_from={workdir} holds a {restored.model_config.family} model, '
          f'which cannot serve this task: data.objective='
          f'{self.config.data.objective!r} with model.family='
          f'{self.model_config.family!r}; start from a '
          f'{self.model_config.family} checkpoint')
    for field in dataclasses.fields(models.ModelConfig):
      if field.name in _HEAD_KEYS:
        continue
      theirs = getattr(restored.model_config, field.name)
      ours = getattr(self.model_config, field.name)
      if theirs != ours:
        raise UsageError(
            f'init_from={workdir} has model.{field.name}={theirs!r}, this '
            f'config {ours!r}; copy the model section of '
            f'{workdir}/config.json')
    # The fresh parameters init_state would draw, without optimizer state.
    fresh = jax.jit(models.init_params, static_argnums=0)(
        self.model, self._init_rngs()[0])
    loaded = flax.traverse_util.flatten_dict(
        jax.device_get(restored.params), sep='/')
    merged, new = {}, []
    for name, value in flax.traverse_util.flatten_dict(fresh,
                                                       sep='/').items():
      if name not in loaded:
        merged[name] = value
        new.append(name)
      elif loaded[name].shape != value.shape:
        raise UsageError(
            f'init_from={workdir} has {name} of shape {loaded[name].shape}, '
            f'this model {value.shape}; copy the model section of '
            f'{workdir}/config.json')
      else:
        merged[name] = jnp.asarray(loaded[name], value.dtype)
    if len(new) == len(merged):
      raise UsageError(f'init_from={workdir} shares no parameter with this '
                       'model; is it the same architecture?')
    params = flax.traverse_util.unflatten_dict(merged, sep='/')
    return self.init_state(params), (
        f'Initialized from {workdir} (step {restored.step}); new: '
        + (', '.join(sorted(new)) or 'nothing'))

  def privacy_spent(self, steps: int) -> dict | None:
    """DP-SGD's (epsilon, delta) after `steps`; None for non-private runs."""
    if not self.config.privacy.dp_sgd:
      return None
    return privacy.spent(self.config.privacy, steps=steps,
                         batch_size=self.config.data.batch_size,
                         train_examples=self.data.train_examples)

  def eval_batches(self, split: str = 'validation'):
    if isinstance(self.data, (classification.ClassificationData,
                              text_pairs.TextPairData)):
      if split not in self.data.evaluation:
        raise UsageError(f'dataset {self.config.data.name!r} has no {split!r}'
                         f' split; it has {sorted(self.data.evaluation)}')
      return self.data.evaluation[split]
    if split != 'validation':
      raise UsageError(f'language-model datasets are evaluated on '
                       f"'validation', not {split!r}")
    return self.data.validation

  def evaluate(self, params, split: str = 'validation') -> dict[str, float]:
    return evaluate(self.eval_step, params, self.eval_batches(split),
                    self.token_bytes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       log: Callable[[str], None] = lambda line: None,
                       stop_at_step: int | None = None) -> dict[str, float]:
  """Trains (resuming if possible) and returns the final validation metrics.

  `stop_at_step` ends the run early, as a preemption would, after saving a
  checkpoint at that step; the schedule still targets `train.num_steps`.
  """
  trainer = Trainer(config)
  os.makedirs(workdir, exist_ok=True)
  check_workdir_matches(config, workdir)
  tc = config.train
  checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=tc.keep_checkpoints)
  train_iter = iter(trainer.data.train.to_iter_dataset())
  latest = checkpointer.latest_step()
  if latest is not None and not checkpointer.has_train_state(latest):
    raise UsageError(
        f'{workdir} holds imported weights without optimizer state; train '
        f'from them into a new --workdir with --config.init_from={workdir}')
  if latest is not None:
    state = trainer.init_state()
    params, rest, data_state = checkpointer.restore(
        latest, *jax.eval_shape(lambda s: s.checkpoint_items(), state))
    state = TrainState(params=params, **rest)
    if data_state is not None:
      train_iter.set_state(data_state)
    log(f'Resuming from the checkpoint at step {latest} in {workdir}.')
  elif config.init_from:
    log(f'Starting a new run in {workdir}.')
    state, message = trainer.init_from(config.init_from)
    log(message)
  else:
    log(f'Starting a new run in {workdir}.')
    state = trainer.init_state()
  checkpoint.save_config(config, workdir)
  trainer.data.tokenizer.save(workdir)

  writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  num_steps = tc.num_steps if stop_at_step is None else min(tc.num_steps,
                                                            stop_at_step)
  step = int(state.step)
  tokens_per_step = config.data.batch_size * config.data.seq_len
  meter = _ThroughputMeter(step)
  final = None
  while step < num_steps:
    state, step_metrics = trainer.train_step(state, next(train_iter))
    step += 1
    if step % tc.log_every == 0 or step == num_steps:
      step_metrics = jax.device_get(step_metrics)  # The only host sync.
      tokens_per_s, eta_s = meter.update(step, tokens_per_step, num_steps)
      if not math.isfinite(step_metrics['loss']):
        raise FloatingPointError(f'loss is {step_metrics["loss"]} at step '
                                 f'{step}; lower optim.learning_rate')
      for name, value in step_metrics.items():
        writer.add_scalar(f'train/{name}', value, step)
      writer.add_scalar('train/tokens_per_s', tokens_per_s, step)
      log(f'step {step}/{tc.num_steps} | loss {step_metrics["loss"]:.4f} | '
          f'lr {step_metrics["learning_rate"]:.2e} | '
          f'grad_norm {step_metrics["grad_norm"]:.3f} | '
          f'{tokens_per_s:,.0f} tokens/s | ETA {_format_seconds(eta_s)}')
    is_last = step == num_steps
    if step % tc.eval_every == 0 or is_last:
      final = trainer.evaluate(state.params)
      for name, value in final.items():
        writer.add_scalar(f'eval/{name}', value, step)
      log(f'eval at step {step}: ' + ' '.join(
          f'val_{k}={v:.4f}' for k, v in final.items()))
      spent = trainer.privacy_spent(step)
      if spent:
        writer.add_scalar('privacy/epsilon', spent['epsilon'], step)
        log(f'DP-SGD at step {step}: epsilon={spent["epsilon"]:.3f} '
            f'delta={spent["delta"]:.2e} (noise multiplier '
            f'{spent["noise_multiplier"]}, clip {spent["l2_clip"]})')
      meter.pause()
    if step % tc.checkpoint_every == 0 or is_last:
      checkpointer.save(step, *state.checkpoint_items(),
                        train_iter.get_state())
  checkpointer.wait()
  checkpointer.close()
  if final is None:  # Nothing left to train: report on what was restored.
    final = trainer.evaluate(state.params)
  writer.close()
  return final


# -------------------------------------------------------------- helpers ----


def validate_train_config(config: ml_collections.ConfigDict) -> None:
  privacy.validate(config.privacy)
  tc = config.train
  for key in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every',
              'keep_checkpoints'):
    if tc[key] <= 0:
      raise UsageError(f'train.{key} must be positive, got {tc[key]}')


# Keys whose change makes a workdir's checkpoints meaningless to resume.
_RESUME_KEYS = {'model': None, 'data': ('name', 'tokenizer', 'vocab_size',
                                        'seq_len', 'batch_size', 'objective')}


def check_workdir_matches(config: ml_collections.ConfigDict, workdir: str):
  """Refuses to resume a workdir trained with another model or data."""
  if not os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE)):
    return
  saved = checkpoint.load_config(workdir)
  for section, keys in _RESUME_KEYS.items():
    old, new = saved[section].to_dict(), config[section].to_dict()
    keys = keys or sorted(set(old) | set(new))
    for key in keys:
      # A key the saved config lacks was added to lm later, with a default
      # that keeps the old behaviour.
      if key in old and old[key] != new.get(key):
        raise UsageError(
            f'{workdir} was trained with {section}.{key}={old.get(key)!r}, '
            f'not {new.get(key)!r}; use a new --workdir or the old value')


class _ThroughputMeter:
  """Tokens/s and ETA between log steps, excluding eval and compile pauses."""

  def __init__(self, step: int):
    self.step, self.time = step, time.perf_counter()

  def update(self, step, tokens_per_step, num_steps):
    now = time.perf_counter()
    per_step = (now - self.time) / max(step - self.step, 1)
    self.step, self.time = step, now
    return tokens_per_step / per_step, per_step * (num_steps - step)

  def pause(self):
    self.time = time.perf_counter()


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 60}m{seconds % 60:02d}s'
