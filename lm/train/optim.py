"""The optimizer of a run, built whole: the optax chain from `config.optim`
(the update rule, warmup + cosine, clipping), with DP-SGD's noise
(`config.privacy`), frozen parameters (LoRA freezes all but its
adapters) and pruning masks (`config.prune`) in the same chain.

`optim.name` picks the update rule, each optax's own:
  adamw      Adam with decoupled weight decay (the default)
  adam       Adam; weight_decay, if any, is an L2 term added to the gradient
             (PyTorch's Adam)
  sgd        SGD with `momentum` (0: none) and `nesterov`; weight_decay as
             L2, as in PyTorch's SGD
  adafactor  factored second moments (T5); the learning rate is relative to
             each parameter's scale; decoupled weight_decay
  lion       the sign of an interpolated momentum (b1, b2); decoupled
             weight_decay; wants a learning rate 3-10x below AdamW's
  muon       the blocks' weight matrices step along their orthogonalized
             Nesterov momentum (`momentum`), scaled to AdamW's update size
             so the same learning rate serves; embeddings, heads, norms
             and biases take AdamW (b1, b2); decoupled weight_decay

Weight decay applies to matrices only (kernels and embeddings), never to
norm scales or biases, as in GPT-2 and nanoGPT. Which block a parameter
belongs to and which axes of a weight matrix it contracts, Muon and
layer_decay ask the model (lm/model/params.py `describe`); the user picks
parameters by name -- the '/'-joined path, e.g. 'block_3/mlp/wi/kernel' --
with regular expressions that must match the whole name:
  freeze       parameters that never change (no update, no optimizer state)
  lr_scale     (pattern, factor) pairs: those parameters' updates, so their
               learning rate, scaled by the factor (the first match wins)
  layer_decay  layer-wise learning-rate decay (ELECTRA, BEiT): block i of L
               learns at decay**(L - i) of the rate, the embeddings at
               decay**(L + 1), the layers after the last block at the full
               rate
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lm import sections
from lm.compress import lora
from lm.compress import prune
from lm.errors import UsageError
from lm.model.config import ModelConfig
from lm.model import params as model_params
from lm.model.params import param_name
from lm.model.params import ParamInfo
from lm.train import privacy


@dataclasses.dataclass(frozen=True)
class OptimConfig(sections.Section):
  """The optimizer: its update rule, learning-rate schedule, decay,
  clipping, and the parameters it treats apart by name."""

  NAME = 'optim'
  # adamw, adam, sgd, adafactor, lion or muon (lm/train/optim.py).
  name: str = 'adamw'
  # Linear warmup to the peak rate, cosine decay to min_lr_ratio of it;
  # the moments' decay rates (adam, adamw, lion), weight decay (matrices
  # only) and global gradient-norm clipping.
  learning_rate: float = 3e-3
  warmup_steps: int = 100
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float = 1.0
  # sgd only: heavy-ball momentum (0: plain SGD), Nesterov's form.
  momentum: float = 0.9
  nesterov: bool = False
  # By parameter name: regexes of frozen parameters, (regex, factor)
  # learning-rate scales, layer-wise decay (1: off).
  freeze: tuple[str, ...] = ()
  lr_scale: tuple[tuple[str, float], ...] = ()
  layer_decay: float = 1.0

  def validate(self) -> None:
    """Raises UsageError naming the key that is wrong and the fix."""
    if self.name not in OPTIMIZERS:
      raise UsageError(f'optim.name={self.name!r} is not an optimizer lm '
                       f'knows; use one of {", ".join(OPTIMIZERS)}')
    if not 0 <= self.momentum < 1:
      raise UsageError(f'optim.momentum must be in [0, 1), got '
                       f'{self.momentum}')
    if not 0 < self.learning_rate < math.inf:
      raise UsageError('optim.learning_rate must be a positive finite '
                       f'number, got {self.learning_rate!r}')
    if not 0 < self.layer_decay <= 1:
      raise UsageError(f'optim.layer_decay must be in (0, 1], got '
                       f'{self.layer_decay}')
    for pattern, factor in self.lr_scale:
      model_params.name_pattern(pattern, 'optim.lr_scale')
      if factor < 0:
        raise UsageError(f'optim.lr_scale factor for {pattern!r} must be '
                         f'>= 0, got {factor}')
    for pattern in self.freeze:
      model_params.name_pattern(pattern, 'optim.freeze')


def validate(config: ml_collections.ConfigDict) -> None:
  """The optim section, and its schedule over train.num_steps."""
  settings = OptimConfig.from_config(config.optim)
  if not 0 <= settings.warmup_steps < config.train.num_steps:
    raise UsageError(f'optim.warmup_steps={settings.warmup_steps} must be in '
                     f'[0, train.num_steps={config.train.num_steps})')


def schedule_values(optim_config, num_steps: int) -> np.ndarray:
  """The schedule's numbers: peak rate, warmup steps, total steps, final
  rate. The train step takes them as an argument, not as constants of its
  program, so runs that differ only in length or rate share one compile
  (and the persistent cache's entry). float32 counts steps exactly up to
  2**24; past that the curve's end moves by under 1e-7 of the run."""
  settings = optim_config
  return np.array([settings.learning_rate, settings.warmup_steps, num_steps,
                   settings.learning_rate * settings.min_lr_ratio],
                  np.float32)


def warmup_cosine(values) -> optax.Schedule:
  """Linear warmup from 0 to the peak rate, then cosine decay to the final
  rate at the last step (optax.warmup_cosine_decay_schedule's curve), of
  `values` from schedule_values: numbers or traced arrays."""
  peak, warmup, total, final = (values[i] for i in range(4))

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    rising = peak * count / jnp.maximum(warmup, 1.0)
    span = jnp.maximum(total - warmup, 1.0)
    done = jnp.clip(count - warmup, 0.0, span) / span
    falling = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * done))
    return jnp.where(count < warmup, rising, falling)

  return schedule


def decay_mask(params):
  """True for parameters that get weight decay: those with 2+ dimensions."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   model_config: ModelConfig, schedule: optax.Schedule,
                   described: dict[str, ParamInfo]
                   ) -> optax.GradientTransformation:
  """The run's whole chain, in the order gradients go through it: pruning
  masks, DP-SGD's clipping and noise of per-example gradients, then for the
  parameters not frozen global-norm clipping, AdamW and the per-parameter
  learning-rate factors. `described` is the model's account of its
  parameters (lm/model/params.py describe)."""
  settings = config.optim
  chain = []
  if settings.clip_norm:
    chain.append(optax.clip_by_global_norm(settings.clip_norm))
  chain.append(update_rule(settings, schedule, described))
  if settings.lr_scale or settings.layer_decay != 1:
    lr_scale = [(model_params.name_pattern(pattern, 'optim.lr_scale'), factor)
                for pattern, factor in settings.lr_scale]
    chain.append(scale_by_name(lambda name: lr_factor(
        name, described[name], lr_scale, settings.layer_decay,
        model_config.num_layers)))
  optimizer = optax.chain(*chain)
  frozen = _frozen_patterns(config, model_config)
  if frozen:
    optimizer = optax.multi_transform(
        {'train': optimizer, 'frozen': optax.set_to_zero()},
        lambda params: _freeze_labels(params, frozen))
  if config.privacy.dp_sgd:  # The clipped sum in, the noisy mean out.
    optimizer = optax.chain(
        privacy.noise(config.privacy, config.train.seed,
                      config.data.batch_size), optimizer)
  prune_config = prune.PruneConfig.from_config(config.prune)
  if prune_config.pattern != 'none':  # The masks join the optimizer state.
    optimizer = prune.masked(optimizer, prune_config,
                             prune.input_axes(model_config))
  return optimizer


OPTIMIZERS = ('adamw', 'adam', 'sgd', 'adafactor', 'lion', 'muon')
# Muon's update RMS matched to AdamW's typical one (Liu et al., 2025,
# "Muon is scalable for LLM training"), so a learning rate carries over.
MUON_RMS = 0.2


def update_rule(settings, schedule, described: dict[str, ParamInfo]
                ) -> optax.GradientTransformation:
  """The optax optimizer `settings.name` names, with its settings."""
  name, decay = settings.name, settings.weight_decay
  if name == 'adamw':
    return optax.adamw(schedule, b1=settings.b1, b2=settings.b2,
                       eps=settings.eps, weight_decay=decay, mask=decay_mask)
  if name == 'lion':
    return optax.lion(schedule, b1=settings.b1, b2=settings.b2,
                      weight_decay=decay, mask=decay_mask)
  if name == 'muon':
    return optax.contrib.muon(
        schedule, beta=settings.momentum, nesterov=True, weight_decay=decay,
        weight_decay_mask=decay_mask, adam_b1=settings.b1,
        adam_b2=settings.b2, adam_weight_decay=decay,
        consistent_rms=MUON_RMS,
        muon_weight_dimension_numbers=muon_axes(described))
  if name == 'adafactor':
    return optax.adafactor(schedule, weight_decay_rate=decay or None,
                           weight_decay_mask=decay_mask)
  if name == 'adam':
    rule = optax.adam(schedule, b1=settings.b1, b2=settings.b2,
                      eps=settings.eps)
  else:
    rule = optax.sgd(schedule, momentum=settings.momentum or None,
                     nesterov=settings.nesterov)
  if not decay:
    return rule
  # Coupled: the L2 term joins the gradient before the rule sees it.
  return optax.chain(optax.add_decayed_weights(decay, decay_mask), rule)


def muon_axes(described: dict[str, ParamInfo]):
  """Which axes of each parameter Muon orthogonalizes over, as optax asks
  for them (a function of the params): the blocks' weight matrices, over
  the input and output axes the model records (leading axes, such as
  scanned layers', are batch axes); None for what AdamW updates."""

  def axes(path, _):
    matrix = described[param_name(path)].matrix
    if matrix is None:
      return None
    return optax.contrib.MuonDimensionNumbers(*matrix)

  return lambda params: jax.tree_util.tree_map_with_path(axes, params)


def _frozen_patterns(config, model_config) -> list:
  freeze = tuple(config.optim.freeze)
  if model_config.lora_rank and not freeze:
    # LoRA trains its adapters alone (all else is frozen, not even in the
    # optimizer state) unless optim.freeze says otherwise.
    freeze = (lora.NOT_ADAPTERS,)
  return [model_params.name_pattern(pattern, 'optim.freeze')
          for pattern in freeze]


def trainable_leaves(config, model_config, params) -> tuple[bool, ...] | None:
  """For each leaf of `params` (in tree order), whether it trains; None
  when all do. The train step differentiates the trainable ones alone, so
  no frozen weight's gradient is ever computed."""
  frozen = _frozen_patterns(config, model_config)
  if not frozen:
    return None
  return tuple(label == 'train' for label in jax.tree.leaves(
      _freeze_labels(params, frozen)))


def scale_by_name(factor_of) -> optax.GradientTransformation:
  """Multiplies each update by factor_of(parameter name): a number, or an
  array that broadcasts against the update (one factor per scanned layer)."""

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * _broadcastable(factor_of(param_name(path)), u),
        updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update)


def _broadcastable(factor, update):
  factor = np.asarray(factor, np.float32)
  return factor.reshape(factor.shape + (1,) * (update.ndim - factor.ndim))


def lr_factor(name: str, info: ParamInfo, lr_scale, layer_decay: float,
              num_layers: int):
  """The learning-rate factor of parameter `name`: the first of the compiled
  `lr_scale` patterns that matches it, else layer-wise decay by the layer
  the model says it belongs to (one factor per layer of a stack)."""
  for pattern, factor in lr_scale:
    if pattern.fullmatch(name):
      return factor
  if layer_decay == 1:
    return 1.0
  if info.layer is not None:
    return layer_decay ** (num_layers - info.layer)
  if info.stacked:  # One factor per layer, on the stack's layer axis.
    return layer_decay ** (num_layers - np.arange(num_layers))
  if info.embedding:
    return layer_decay ** (num_layers + 1)
  return 1.0


def _freeze_labels(params, frozen: list):
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: 'frozen' if any(p.fullmatch(param_name(path))
                                      for p in frozen) else 'train', params)
  names = [param_name(path) for path, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  for pattern in frozen:
    if not any(pattern.fullmatch(n) for n in names):
      raise UsageError(
          f'optim.freeze pattern {pattern.pattern!r} matches no parameter; '
          f'names look like {names[:3]} (the whole name must match)')
  if 'train' not in jax.tree.leaves(labels):
    raise UsageError('optim.freeze matches every parameter; nothing would '
                     'train')
  return labels
