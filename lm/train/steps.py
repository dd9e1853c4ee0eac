"""The train step, a pure function.

`train_step` is one optimizer update of a `TrainState` on a batch (with
gradient accumulation, per-example gradients for DP-SGD, or a teacher's
soft targets); lm/train/trainer.py compiles it for a mesh. The forward
pass and the metric sums it shares with evaluation are
lm/evaluate/batch_metrics.py's.
"""

from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from lm.compress import distill as distillation
from lm.evaluate import batch_metrics
from lm.train import optim
from lm.train import privacy


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


def train_step(state: TrainState, batch, schedule_values,
               teacher_params=None, *, model, optimizer_for,
               dp_clip: float = 0.0,
               dp_microbatch: int = 0, accum_steps: int = 1,
               distill: distillation.Distill | None = None,
               trainable: tuple[bool, ...] | None = None):
  """One optimizer update on a batch (see lm/data: pipeline, classification).

  The loss is the mean over the batch's weighted targets, plus the router
  losses of mixture-of-experts layers. With `accum_steps` > 1 the batch is
  split into that many micro-batches whose gradients are summed one after
  another (a scan), so only a micro-batch's activations are alive at once;
  the update equals the whole batch's. With `dp_clip` > 0 (DP-SGD) the
  optimizer gets the sum of per-example gradients clipped to that L2 norm,
  formed `dp_microbatch` examples at a time (lm/train/privacy.py); its chain
  adds the noise. With `distill` the teacher (its params
  `teacher_params`) gives soft targets (lm/compress/distill.py).
  `trainable` (a flag per parameter leaf, lm/train/optim.py) differentiates
  only the flagged parameters: frozen ones get zeros, and their weight
  gradients are never computed. The learning-rate schedule is
  `schedule_values` (lm/train/optim.py schedule_values), an argument rather
  than constants of the program, and `optimizer_for(schedule)` the run's
  optimizer with it.
  """
  schedule = optim.warmup_cosine(schedule_values)
  optimizer = optimizer_for(schedule)
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, batch, rng, num_targets, aux_share):
    outputs, aux = batch_metrics.forward(model, params, batch,
                                         deterministic=False,
                                         rngs={'dropout': rng})
    sums = batch_metrics.output_sums(outputs, batch)
    router_loss = sum(jnp.sum(x) for x in _sown(aux, 'router_loss'))
    loss = sums['nll'] / num_targets + aux_share * router_loss
    totals = {'nll': sums['nll'], 'correct': sums['correct'],
             'router_loss': aux_share * router_loss,
             'expert_load': _expert_load(aux)}
    if distill is not None:
      teacher_outputs, _ = batch_metrics.forward(distill.teacher,
                                                 teacher_params, batch)
      totals['soft_loss'] = distillation.soft_loss_sum(
          outputs, teacher_outputs, batch['weights'], distill.temperature)
      loss = ((1 - distill.alpha) * sums['nll'] + distill.alpha *
              totals['soft_loss']) / num_targets + aux_share * router_loss
    return loss, totals

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if trainable is not None:
    grad_fn = _differentiating_only(loss_fn, trainable)
  num_targets = jnp.maximum(jnp.sum(batch['weights']), 1.0)
  if dp_clip:
    split = _TrainableSplit(state.params, trainable)

    def example_grad(train_leaves, example, index):
      def example_loss(train_leaves):
        return loss_fn(split.whole(train_leaves),
                       jax.tree.map(lambda x: x[None], example),
                       jax.random.fold_in(dropout_rng, index),
                       jnp.maximum(jnp.sum(example['weights']), 1.0), 1.0)
      return jax.value_and_grad(example_loss, has_aux=True)(train_leaves)

    def chunk_sums(chunk):
      # Per-example gradients exist for one chunk of dp_microbatch rows.
      (_, totals), grads = jax.vmap(example_grad, in_axes=(None, 0, 0))(
          split.train, *chunk)
      return (privacy.clipped_sum(grads, dp_clip),
              jax.tree.map(lambda x: jnp.sum(x, 0), totals))

    size = len(batch['weights'])
    chunks = size // (dp_microbatch or size)
    clipped, totals = _summed_over(chunk_sums, _micro_batches(
        (batch, jnp.arange(size)), chunks))
    totals['router_loss'] /= size
    totals['expert_load'] /= size
    grads = split.gradients(clipped)
    grad_norm = optax.tree.norm(grads) / size
  elif accum_steps > 1:
    def micro_sums(micro):
      micro_batch, index = micro
      (_, totals), grads = grad_fn(state.params, micro_batch,
                                  jax.random.fold_in(dropout_rng, index),
                                  num_targets, 1.0 / accum_steps)
      totals['expert_load'] /= accum_steps
      return grads, totals

    grads, totals = _summed_over(micro_sums, (
        _micro_batches(batch, accum_steps), jnp.arange(accum_steps)))
    grad_norm = optax.tree.norm(grads)
  else:
    (_, totals), grads = grad_fn(state.params, batch, dropout_rng,
                                num_targets, 1.0)
    grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # A non-finite loss or gradient (an overflow, a bad batch) must not reach
  # the parameters or Adam's moments: the step keeps them as they were.
  finite = jnp.isfinite(totals['nll']) & jnp.isfinite(grad_norm)
  params, opt_state = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old),
      (params, opt_state), (state.params, state.opt_state))
  step_metrics = {'loss': totals['nll'] / num_targets,
                  'token_accuracy': totals['correct'] / num_targets,
                  'grad_norm': grad_norm,
                  'learning_rate': schedule(state.step),
                  'skipped': jnp.logical_not(finite).astype(jnp.int32)}
  if distill is not None:
    step_metrics['soft_loss'] = totals['soft_loss'] / num_targets
  if totals['expert_load'].size:
    # 1.0 when every expert gets its share of tokens; E when one gets all.
    step_metrics['router_loss'] = totals['router_loss']
    step_metrics['expert_load_max'] = (jnp.max(totals['expert_load'])
                                       * totals['expert_load'].size)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), step_metrics


class _TrainableSplit:
  """The trainable leaves of `params` (all when `trainable` is None), and
  the ways back: params with new trainable leaves, and gradients of the
  trainable leaves as a params tree with zeros for the frozen ones."""

  def __init__(self, params, trainable):
    self._leaves, self._tree = jax.tree.flatten(params)
    self._flags = trainable or (True,) * len(self._leaves)
    self.train = [x for x, t in zip(self._leaves, self._flags) if t]

  def whole(self, train):
    given = iter(train)
    return self._tree.unflatten([next(given) if t else x for x, t in
                                 zip(self._leaves, self._flags)])

  def gradients(self, grads):
    given = iter(grads)
    return self._tree.unflatten([next(given) if t else jnp.zeros_like(x)
                                 for x, t in zip(self._leaves, self._flags)])


def _differentiating_only(loss_fn, trainable):
  """value_and_grad of loss_fn over the trainable leaves only; the frozen
  ones enter the loss as constants and get zero gradients."""

  def partial_grad_fn(params, *args):
    split = _TrainableSplit(params, trainable)
    value, grads = jax.value_and_grad(
        lambda train, *args: loss_fn(split.whole(train), *args),
        has_aux=True)(split.train, *args)
    return value, split.gradients(grads)

  return partial_grad_fn


def _summed_over(fn, xs):
  """The sum of fn(x) over the slices x of xs along their leading axis,
  one slice at a time (a scan), so one slice's intermediates are alive."""
  shapes = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], xs))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def add(running, x):
    return jax.tree.map(jnp.add, running, fn(x)), None

  return jax.lax.scan(add, zeros, xs)[0]


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
