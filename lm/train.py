"""Training: TrainState, train_step, eval_step and the loop.

`train_and_evaluate(config, workdir)` is the whole run: build the data and
model, resume from the workdir's latest checkpoint if there is one, train to
`config.train.num_steps`, evaluating and checkpointing on the way, and
return the final validation metrics. Log lines go to the `log` callback
(the library prints nothing); scalars and text go to TensorBoard files in
`<workdir>/tensorboard`.
"""

import contextlib
import dataclasses
import functools
import itertools
import os
import signal
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lm import checkpoint
from lm import flops
from lm import metrics
from lm import models
from lm import optim
from lm import preemption
from lm import privacy
from lm import progress as progress_line
from lm import sharding
from lm import summaries
from lm.compress import distill as distillation
from lm.compress import lora
from lm.compress import prune
from lm.data import classification
from lm.data import datasets
from lm.data import objectives
from lm.data import pipeline
from lm.data import text_pairs
from lm.errors import DivergedError
from lm.errors import UsageError
from lm.workdir_lock import WorkdirLock

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


def forward(model, params, batch, **kwargs):
  """The model's outputs on a batch, and the auxiliary values its layers
  sowed in the 'aux' collection (lm/moe.py: router losses, expert load)."""
  return model.apply({'params': params}, **models.model_inputs(model, batch),
                     mutable=['aux'], **kwargs)


def batch_sums(model, params, batch, token_bytes_V=None, **kwargs):
  """Loss sums of one batch: per target token for the language-modelling
  objectives, per sequence for classification (batches with a 'label')."""
  return _sums(forward(model, params, batch, **kwargs)[0], batch,
               token_bytes_V)


def _sums(outputs, batch, token_bytes_V=None):
  if 'label' in batch:
    return metrics.classification_sums(outputs, batch['label'],
                                       batch['weights'])
  return metrics.lm_sums(outputs, batch['targets'], batch['weights'],
                         token_bytes_V)


def train_step(state: TrainState, batch, teacher_params=None, *, model,
               optimizer, schedule, per_example: bool = False,
               accum_steps: int = 1, distill: 'distillation.Distill' = None):
  """One optimizer update on a batch (see lm/data: pipeline, classification).

  The loss is the mean over the batch's weighted targets, plus the router
  losses of mixture-of-experts layers. With `accum_steps` > 1 the batch is
  split into that many micro-batches whose gradients are summed one after
  another (a scan), so only a micro-batch's activations are alive at once;
  the update equals the whole batch's. With `per_example` the optimizer
  gets one gradient per example (a leading batch axis), as DP-SGD's
  aggregation (lm/privacy.py) needs. With `distill` the teacher (its params
  `teacher_params`) gives soft targets (lm/compress/distill.py).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, batch, rng, num_targets, aux_share):
    outputs, aux = forward(model, params, batch, deterministic=False,
                           rngs={'dropout': rng})
    sums = _sums(outputs, batch)
    router_loss = sum(jnp.sum(x) for x in _sown(aux, 'router_loss'))
    loss = sums['nll'] / num_targets + aux_share * router_loss
    parts = {'nll': sums['nll'], 'correct': sums['correct'],
             'router_loss': aux_share * router_loss,
             'expert_load': _expert_load(aux)}
    if distill is not None:
      teacher_outputs, _ = forward(distill.teacher, teacher_params, batch)
      parts['soft_loss'] = distillation.soft_loss_sum(
          outputs, teacher_outputs, batch['weights'], distill.temperature)
      loss = ((1 - distill.alpha) * sums['nll'] + distill.alpha *
              parts['soft_loss']) / num_targets + aux_share * router_loss
    return loss, parts

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  num_targets = jnp.maximum(jnp.sum(batch['weights']), 1.0)
  if per_example:
    def example_grad(example, index):
      return grad_fn(state.params, jax.tree.map(lambda x: x[None], example),
                     jax.random.fold_in(dropout_rng, index),
                     jnp.maximum(jnp.sum(example['weights']), 1.0), 1.0)

    (_, parts), grads = jax.vmap(example_grad)(
        batch, jnp.arange(len(batch['weights'])))
    parts = jax.tree.map(lambda x: jnp.sum(x, 0), parts)
    parts['router_loss'] /= len(batch['weights'])
    parts['expert_load'] /= len(batch['weights'])
    grad_norm = optax.tree.norm(jax.tree.map(lambda g: g.mean(0), grads))
  elif accum_steps > 1:
    def micro_step(total, micro):
      micro_batch, index = micro
      (_, parts), grads = grad_fn(state.params, micro_batch,
                                  jax.random.fold_in(dropout_rng, index),
                                  num_targets, 1.0 / accum_steps)
      parts['expert_load'] /= accum_steps
      return jax.tree.map(jnp.add, total, (grads, parts)), None

    micro_batches = _micro_batches(batch, accum_steps)
    (_, parts), grads = jax.eval_shape(
        grad_fn, state.params, jax.tree.map(lambda x: x[0], micro_batches),
        dropout_rng, num_targets, 1.0)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (grads, parts))
    (grads, parts), _ = jax.lax.scan(
        micro_step, zeros, (micro_batches, jnp.arange(accum_steps)))
    grad_norm = optax.tree.norm(grads)
  else:
    (_, parts), grads = grad_fn(state.params, batch, dropout_rng,
                                num_targets, 1.0)
    grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # A non-finite loss or gradient (an overflow, a bad batch) must not reach
  # the parameters or Adam's moments: the step keeps them as they were.
  finite = jnp.isfinite(parts['nll']) & jnp.isfinite(grad_norm)
  params, opt_state = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old),
      (params, opt_state), (state.params, state.opt_state))
  step_metrics = {'loss': parts['nll'] / num_targets,
                  'token_accuracy': parts['correct'] / num_targets,
                  'grad_norm': grad_norm,
                  'learning_rate': schedule(state.step),
                  'skipped': jnp.logical_not(finite).astype(jnp.int32)}
  if distill is not None:
    step_metrics['soft_loss'] = parts['soft_loss'] / num_targets
  if parts['expert_load'].size:
    # 1.0 when every expert gets its share of tokens; E when one gets all.
    step_metrics['router_loss'] = parts['router_loss']
    step_metrics['expert_load_max'] = (jnp.max(parts['expert_load'])
                                       * parts['expert_load'].size)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), step_metrics


def _micro_batches(batch, count: int):
  """[count, B / count, ...]: micro-batch i takes rows i, i + count, ...,
  so each stays spread over the devices the batch's rows are on."""
  return jax.tree.map(
      lambda x: x.reshape((x.shape[0] // count, count) + x.shape[1:])
      .swapaxes(0, 1), batch)


def _sown(aux, name: str) -> list[jax.Array]:
  """Every value the model's layers sowed as `name` (one per layer; a
  stacked one for scanned layers)."""
  flat = flax.traverse_util.flatten_dict(aux.get('aux', {}))
  return [x for path, values in flat.items() if path[-1] == name
          for x in jax.tree.leaves(values)]


def _expert_load(aux) -> jax.Array:
  """The fraction of routed tokens each expert got, averaged over the
  mixture-of-experts layers; empty for a model without them."""
  loads = _sown(aux, 'expert_load')
  if not loads:
    return jnp.zeros((0,))
  stacked = jnp.concatenate([x.reshape(-1, x.shape[-1]) for x in loads])
  return jnp.mean(stacked, axis=0)


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


# Model keys that change how a model is computed, not its parameters.
_COMPUTE_KEYS = ('remat', 'attention', 'attention_block')
# Model keys fine-tuning may change: heads, regularization and computation.
_HEAD_KEYS = ('num_classes', 'pooling', 'pooler', 'mlm_head', 'dropout_rate',
              'dtype', 'lora_rank', 'lora_alpha', 'lora_targets'
              ) + _COMPUTE_KEYS


class Trainer:
  """Model, optimizer, compiled steps and the data of one config."""

  def __init__(self, config: ml_collections.ConfigDict,
               with_data: bool = True):
    """`with_data=False` builds the model and compiled steps alone, for
    batches made elsewhere (experiments/benchmark.py's random tokens)."""
    validate_config(config)
    self.config = config
    self.mesh = self._make_mesh(config)
    self.model_config = models.ModelConfig.from_config(config.model)
    self.model = models.build_model(self.model_config)
    longest = max(config.data.seq_len, config.data.target_len)
    limit = self.model_config.context_limit
    if limit is not None and longest > limit:
      raise UsageError(
          f'data.seq_len/target_len ({longest} tokens) exceed model.max_len='
          f'{limit}, the size of the learned position table; raise '
          'model.max_len or shorten the data')
    if config.data.objective in text_pairs.FAMILY_OF:
      self._check_family(text_pairs.FAMILY_OF[config.data.objective])
    self.data = None
    if with_data:
      self._load_data()
    self.schedule = optim.make_schedule(config.optim, config.train.num_steps)
    optim_config = config.optim
    if self.model_config.lora_rank and not optim_config.freeze:
      # LoRA trains its adapters alone (all else is frozen, not even in the
      # optimizer state) unless optim.freeze says otherwise.
      optim_config = ml_collections.ConfigDict(optim_config.to_dict())
      optim_config.freeze = (lora.NOT_ADAPTERS,)
    self.optimizer = optim.make_optimizer(optim_config, self.schedule,
                                          self.model_config.num_layers)
    if config.privacy.dp_sgd:
      self.optimizer = optax.chain(
          privacy.aggregator(config.privacy, config.train.seed),
          self.optimizer)
    prune_config = prune.PruneConfig.from_config(config.prune)
    if prune_config.pattern != 'none':  # Masks join the optimizer state.
      self.optimizer = prune.masked(self.optimizer, prune_config,
                                    prune.input_axes(self.model_config))
    # Traced once: the shardings and restoring both read it.
    self._boxed_state = self._abstract_boxed_state()
    self.state_shardings = sharding.logical_shardings(self._boxed_state,
                                                      self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    # A teacher's params are a third argument of the step, laid out on the
    # mesh as its own training would (not constants baked into the program).
    distill, self._teacher_args, teacher_shardings = None, (), ()
    if config.distill.teacher:
      distill, teacher_params = distillation.load_teacher(config.distill,
                                                          self.model_config)
      teacher_shardings = (sharding.logical_shardings(
          models.logical_abstract_params(distill.teacher), self.mesh),)
      self._teacher_args = (jax.device_put(teacher_params,
                                           teacher_shardings[0]),)
    self._train_step_jit = jax.jit(
        functools.partial(train_step, model=self.model,
                          optimizer=self.optimizer, schedule=self.schedule,
                          per_example=config.privacy.dp_sgd,
                          accum_steps=config.train.grad_accum_steps,
                          distill=distill),
        in_shardings=(self.state_shardings, self.batch_sharding) +
        teacher_shardings,
        out_shardings=(self.state_shardings,
                       sharding.replicated(self.mesh)),
        donate_argnums=0)
    self._train_step = sharding.with_rules(self._train_step_jit, self.mesh)
    self._eval_step = sharding.with_rules(jax.jit(
        functools.partial(eval_step, model=self.model),
        out_shardings=sharding.replicated(self.mesh)), self.mesh)
    # Ids past the tokenizer's ([MASK], sentinels) stand for no text.
    self.token_bytes = None if self.data is None else jnp.zeros(
        self.model_config.vocab_size, jnp.int32).at[
            :len(self.data.token_bytes)].set(self.data.token_bytes)

  def _load_data(self):
    """Sets self.data, after checking that the model fits it."""
    # The first process builds (and caches) datasets and tokenizers before
    # the others read them, so that no two write the same files.
    if jax.process_index() == 0:
      self.data = self._make_data()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('lm: data built')
    if jax.process_index() != 0:
      self.data = self._make_data()
    if self.config.data.objective == 'classify':
      self._check_classifier()
    elif self.config.data.objective in text_pairs.FAMILY_OF:
      self._check_vocab(0)
    else:
      self._check_language_model()

  def _make_data(self):
    """This process's share of the data (see lm/data/pipeline.py)."""
    shard = {'process_index': jax.process_index(),
             'process_count': jax.process_count()}
    objective = self.config.data.objective
    if objective == 'classify':
      return classification.make_classification_data(self.config.data,
                                                     **shard)
    if objective in text_pairs.FAMILY_OF:
      return text_pairs.make_text_pair_data(self.config.data, **shard)
    return pipeline.make_lm_data(self.config.data, **shard)

  def _make_mesh(self, config):
    """The mesh, after checking that the batches split over it."""
    mesh = sharding.make_mesh(config.mesh.shape)
    processes = jax.process_count()
    accum = config.train.grad_accum_steps
    # (validate_config has checked that accum is positive.)
    if accum > 1 and config.privacy.dp_sgd:
      raise UsageError('train.grad_accum_steps > 1 with privacy.dp_sgd: '
                       'DP-SGD clips per-example gradients of the whole '
                       'batch already; set train.grad_accum_steps=1')
    if config.data.batch_size % accum:
      raise UsageError(
          f'data.batch_size={config.data.batch_size} is not divisible by '
          f'train.grad_accum_steps={accum}; use a multiple of it')
    sharding.check_batch(config.data.batch_size // accum, mesh,
                         'data.batch_size / train.grad_accum_steps'
                         if accum > 1 else 'data.batch_size', processes)
    sharding.check_batch(config.data.eval_batch_size, mesh,
                         'data.eval_batch_size', processes)
    return mesh

  def _abstract_boxed_state(self) -> 'TrainState':
    """The train state's shapes, its parameters (and their optimizer
    moments) boxed with logical axis names."""

    def state(params):
      return TrainState(step=jnp.int32(0), params=params,
                        opt_state=self.optimizer.init(params),
                        rng=jax.random.PRNGKey(0))

    return jax.eval_shape(state, models.logical_abstract_params(self.model))

  def abstract_state(self) -> 'TrainState':
    """Shapes, dtypes and shardings of the train state (for restoring)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(self._boxed_state), self.state_shardings)

  def put_batch(self, batch):
    """This process's rows of a batch -> global arrays on the mesh."""
    return sharding.put_batch(batch, self.batch_sharding)

  def train_step(self, state: 'TrainState', batch):
    """One update on a batch of this process's rows (host arrays)."""
    return self._train_step(state, self.put_batch(batch), *self._teacher_args)

  def step_memory(self) -> dict[str, int]:
    """Bytes of the compiled train step (see memory_sizes) for the data's
    batches."""
    local = next(iter(self.data.train.to_iter_dataset()))
    batch = {k: jax.ShapeDtypeStruct(
        (v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype,
        sharding=self.batch_sharding) for k, v in local.items()}
    state = self.abstract_state()  # (Outside the mesh context: see it.)
    return memory_sizes(self.compile_train_step(state, batch))

  def flops_per_token(self) -> float:
    """Model FLOPs per trained token at data.seq_len (lm/flops.py)."""
    return flops.train_flops_per_token(
        self.model_config, self.config.data.seq_len,
        nn.unbox(self._boxed_state.params))

  def compile_train_step(self, state, batch):
    """The train step compiled ahead of time for global `state` and `batch`
    (arrays or their shapes): call it as `compiled(state, batch, *teacher)`
    with `teacher_args`."""
    with sharding.activation_rules(self.mesh):
      return self._train_step_jit.lower(state, batch,
                                        *self._teacher_args).compile()

  @property
  def teacher_args(self) -> tuple:
    """The train step's arguments after the batch (a distillation teacher's
    params, or none)."""
    return self._teacher_args

  def eval_step(self, params, batch, token_bytes_V):
    return self._eval_step(params, self.put_batch(batch), token_bytes_V)

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

    @functools.partial(jax.jit, out_shardings=self.state_shardings)
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
    """Metrics on `split`, or on its first train.eval_steps batches (what
    training reports; experiments/evaluate.py scores whole splits)."""
    batches = self.eval_batches(split)
    if self.config.train.eval_steps:
      batches = itertools.islice(batches, self.config.train.eval_steps)
    return evaluate(self.eval_step, params, batches, self.token_bytes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       log: Callable[[str], None] = lambda line: None,
                       stop_at_step: int | None = None,
                       progress=None) -> dict[str, float]:
  """Trains (resuming if possible) and returns the final validation metrics.

  `log` gets each line a run reports. `progress` (lm/progress.py's
  `for_output()`) shows a live line of step, loss, tokens/s, MFU and ETA.
  `stop_at_step` ends the run early, as a preemption would, after saving a
  checkpoint at that step; the schedule still targets `train.num_steps`.
  """
  if config.model.get('quant', 'none') != 'none':
    raise UsageError(
        f"model.quant={config.model.quant!r} is an inference format that "
        "experiments/compress.py writes; train with model.quant='none' and "
        'quantize the trained workdir')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UsageError(f'the workdir {workdir} is a file, not a directory; '
                     'give a new or existing workdir')
  trainer = Trainer(config)
  primary = jax.process_index() == 0
  if not primary:  # One process speaks for all; every one checkpoints.
    log, progress = lambda line: None, None
  elif progress is not None:
    log = _below(progress, log)
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


def _below(progress, log: Callable[[str], None]) -> Callable[[str], None]:
  """`log`, clearing a terminal's progress line before each line."""

  def log_below(line: str):
    progress.clear()
    log(line)

  return log_below


def _train(trainer: Trainer, config: ml_collections.ConfigDict, workdir: str,
           log: Callable[[str], None], stop_at_step: int | None, progress
           ) -> dict[str, float]:
  """The body of train_and_evaluate, in a workdir this run holds."""
  primary = jax.process_index() == 0
  tc = config.train
  checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=tc.keep_checkpoints)
  # Closing waits for a save in flight, also when the run fails: a good
  # state that was being written is kept.
  with contextlib.closing(checkpointer), preemption.Watch() as watch:
    state, train_iter = _start(trainer, config, workdir, checkpointer, log)
    log(f'Mesh: {sharding.describe(trainer.mesh)}.')
    if primary:
      checkpoint.save_config(config, workdir)
      trainer.data.tokenizer.save(workdir)
    with contextlib.closing(summaries.Writer(workdir, primary)) as writer:
      return _loop(trainer, config, workdir, state, train_iter, checkpointer,
                   writer, watch, log, stop_at_step, progress)


def _start(trainer: Trainer, config: ml_collections.ConfigDict, workdir: str,
           checkpointer: checkpoint.Checkpointer, log: Callable[[str], None]):
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
  marker = preemption.take_marker(workdir) if jax.process_index() == 0 else None
  if latest is not None:
    # Restored straight onto this run's mesh, whatever mesh saved it.
    params, rest, data_state = checkpointer.restore(
        latest, *trainer.abstract_state().checkpoint_items())
    state = TrainState(params=params, **rest)
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


def _loop(trainer: Trainer, config: ml_collections.ConfigDict, workdir: str,
          state: TrainState, train_iter, checkpointer: checkpoint.Checkpointer,
          writer: summaries.Writer, watch: preemption.Watch,
          log: Callable[[str], None], stop_at_step: int | None,
          progress) -> dict[str, float]:
  """Steps from the state's to the end: logging, evaluating, checkpointing;
  the final validation metrics."""
  tc = config.train
  num_steps = tc.num_steps if stop_at_step is None else min(tc.num_steps,
                                                            stop_at_step)
  step = int(state.step)
  saved_step = step  # A resumed run's state is on disk already.
  tokens_per_step = config.data.batch_size * config.data.seq_len
  # Model FLOPs utilization (lm/flops.py), against the datasheet peak where
  # the device has one, else against this process's measured matmul peak.
  flops_per_token = trainer.flops_per_token()
  peak = flops.peak_flops(trainer.model_config.dtype)
  peak_flops = peak['datasheet'] or peak['measured']
  profile = _Profile(os.path.join(workdir, 'profile'), step + 2,
                     tc.profile_steps) if tc.get('profile_steps') else None
  meter = progress_line.Throughput(step, tokens_per_step, num_steps)
  skipped = _SkippedSteps(tc.get('max_nonfinite_steps', 10), checkpointer,
                         log)
  tracker = progress and progress_line.Tracker(
      progress, tc.num_steps, tokens_per_step, flops_per_token, peak_flops)
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
    if step % tc.log_every == 0 or is_last:
      step_metrics = jax.device_get(step_metrics)
      skipped.flush()
      tokens_per_s, eta_s = meter.update(step)
      mfu = tokens_per_s * flops_per_token / peak_flops
      step_metrics['skipped'] = skipped.total  # In all, not this step's.
      if tracker:  # (The metrics are here already: no wait.)
        tracker.finished(step, float(step_metrics['loss']))
      writer.scalars('train', dict(
          step_metrics, tokens_per_s=tokens_per_s, mfu=mfu,
          param_norm=float(summaries.param_norm(state.params))), step)
      log(f'step {step}/{tc.num_steps} | loss {step_metrics["loss"]:.4f} | '
          f'lr {step_metrics["learning_rate"]:.2e} | '
          f'grad_norm {step_metrics["grad_norm"]:.3f} | '
          + (f'router_loss {step_metrics["router_loss"]:.4f} | '
             f'expert_load_max {step_metrics["expert_load_max"]:.2f} | '
             if 'router_loss' in step_metrics else '')
          + (f'soft_loss {step_metrics["soft_loss"]:.4f} | '
             if 'soft_loss' in step_metrics else '')
          + (f'skipped {skipped.total} | ' if skipped.total else '')
          + f'{tokens_per_s:,.0f} tokens/s | MFU {mfu:.1%} | '
          f'ETA {progress_line.format_seconds(eta_s)}')
    if step % tc.eval_every == 0 or is_last:
      final = trainer.evaluate(state.params)
      writer.scalars('eval', final, step)
      log(f'eval at step {step}: ' + ' '.join(
          f'val_{k}={v:.4f}' for k, v in final.items()))
      if sample:
        texts = sample(state.params)
        writer.texts('samples', texts, step)
        for text in texts:
          log(f'--- sample at step {step} ---\n{text}')
      if tc.get('histograms', False):
        writer.histograms(state.params, step)
      spent = trainer.privacy_spent(step)
      if spent:
        writer.scalars('privacy', {'epsilon': spent['epsilon']}, step)
        log(f'DP-SGD at step {step}: epsilon={spent["epsilon"]:.3f} '
            f'delta={spent["delta"]:.2e} (noise multiplier '
            f'{spent["noise_multiplier"]}, clip {spent["l2_clip"]})')
      meter.pause()
      if tracker:
        tracker.pause()
    signal_name = _stop_requested(watch, step, tc.log_every)
    if step % tc.checkpoint_every == 0 or is_last or (
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


# -------------------------------------------------------------- helpers ----


def memory_sizes(compiled) -> dict[str, int]:
  """Bytes of a compiled program per device, from XLA's memory analysis:
  arguments, outputs, what outputs reuse of the arguments (donation),
  temporaries, and the peak they add up to."""
  analysis = compiled.memory_analysis()
  sizes = {'argument_bytes': analysis.argument_size_in_bytes,
           'output_bytes': analysis.output_size_in_bytes,
           'alias_bytes': analysis.alias_size_in_bytes,
           'temp_bytes': analysis.temp_size_in_bytes}
  sizes['peak_bytes'] = (sizes['argument_bytes'] + sizes['output_bytes']
                         - sizes['alias_bytes'] + sizes['temp_bytes'])
  return sizes


def validate_config(config: ml_collections.ConfigDict,
                    devices: int | None = None) -> None:
  """Every section a run reads, checked before any work (no data read):
  raises UsageError naming the key and the fix. With `devices`, the mesh
  must also divide that many devices (a multi-process run knows how many
  only after joining, so Trainer checks it again on its mesh)."""
  models.ModelConfig.from_config(config.model)
  validate_train_config(config)
  data = config.data
  if data.name not in datasets.BUILDERS:
    raise UsageError(f'unknown dataset {data.name!r} (data.name); known: '
                     f'{sorted(datasets.BUILDERS)}')
  if data.tokenizer not in ('byte', 'sentencepiece') and not os.path.isdir(
      data.tokenizer):
    raise UsageError(f"data.tokenizer={data.tokenizer!r} is not 'byte', "
                     "'sentencepiece' or a directory holding a tokenizer")
  known = objectives.OBJECTIVES + ('classify',) + tuple(text_pairs.FAMILY_OF)
  if data.objective not in known:
    raise UsageError(f'data.objective={data.objective!r} is not one of '
                     f'{list(known)}')
  for key in ('seq_len', 'batch_size', 'eval_batch_size', 'vocab_size'):
    if data[key] <= 0:
      raise UsageError(f'data.{key} must be positive, got {data[key]}')
  if config.optim.name != 'adamw':
    raise UsageError(f"optim.name={config.optim.name!r} is not supported; "
                     "use 'adamw'")
  rate = config.optim.learning_rate
  if not (isinstance(rate, (int, float)) and 0 <= rate < float('inf')):
    raise UsageError(f'optim.learning_rate must be a finite number >= 0, got '
                     f'{rate!r}')
  if config.optim.warmup_steps < 0:
    raise UsageError(f'optim.warmup_steps must be >= 0, got '
                     f'{config.optim.warmup_steps}')
  sharding.check_mesh_shape(config.mesh.shape)
  if devices is not None:
    sharding.mesh_shape(config.mesh.shape, devices)


def validate_train_config(config: ml_collections.ConfigDict) -> None:
  privacy.validate(config.privacy)
  tc = config.train
  for key in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every',
              'keep_checkpoints', 'max_nonfinite_steps', 'grad_accum_steps'):
    if tc.get(key, 1) <= 0:  # (Keys added later are absent in old runs.)
      raise UsageError(f'train.{key} must be positive, got {tc[key]}')
  if tc.get('profile_steps', 0) < 0:
    raise UsageError(f'train.profile_steps must be >= 0 (0: no profile), '
                     f'got {tc.profile_steps}')
  if tc.get('eval_steps', 0) < 0:
    raise UsageError(f'train.eval_steps must be >= 0 (0: the whole split), '
                     f'got {tc.eval_steps}')


# Keys whose change makes a workdir's checkpoints meaningless to resume.
_RESUME_KEYS = {'model': None, 'data': ('name', 'tokenizer', 'vocab_size',
                                        'seq_len', 'batch_size', 'objective'),
                # Pruning keeps masks in the optimizer state.
                'prune': ('pattern',)}


def check_workdir_matches(config: ml_collections.ConfigDict, workdir: str):
  """Refuses to resume a workdir trained with another model or data."""
  if not os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE)):
    return
  saved = checkpoint.load_config(workdir)
  for section, keys in _RESUME_KEYS.items():
    if section not in saved:  # Written before lm had the section.
      continue
    old, new = saved[section].to_dict(), config[section].to_dict()
    # Remat and the attention algorithm trade memory for time; the
    # parameters are the same.
    keys = keys or sorted((set(old) | set(new)) - set(_COMPUTE_KEYS))
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


class _Profile:
  """A jax.profiler trace of `count` steps from step `start` (after the
  compiling first steps) into `directory`, for TensorBoard's profile tab or
  Perfetto."""

  def __init__(self, directory: str, start: int, count: int):
    self.directory, self.start, self.end = directory, start, start + count
    self.running = False

  def before(self, step: int):
    if step == self.start:
      jax.profiler.start_trace(self.directory)
      self.running = True

  def after(self, step: int, step_metrics, log):
    if self.running and step >= self.end:
      jax.block_until_ready(step_metrics)  # The traced steps have finished.
      self.stop(log)

  def stop(self, log):
    if self.running:
      jax.profiler.stop_trace()
      self.running = False
      log(f'Profile of steps {self.start + 1}-{self.end} written to '
          f'{self.directory}.')

