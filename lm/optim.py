"""The optax chain from `config.optim`: AdamW, warmup + cosine, clipping.

Weight decay applies to matrices only (kernels and embeddings), never to
norm scales or biases, as in GPT-2 and nanoGPT. Parameters are picked by
name -- the '/'-joined path, e.g. 'block_3/mlp/wi/kernel' -- with regular
expressions that must match the whole name:
  freeze       parameters that never change (no update, no optimizer state)
  lr_scale     (pattern, factor) pairs: those parameters' updates, so their
               learning rate, scaled by the factor (the first match wins)
  layer_decay  layer-wise learning-rate decay (ELECTRA, BEiT): block i of L
               learns at decay**(L - i) of the rate, the embeddings at
               decay**(L + 1), the layers after the last block at the full
               rate
"""

import re

import jax
import numpy as np
import optax

from lm.errors import UsageError


def make_schedule(optim_config, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, cosine decay to `min_lr_ratio` of it."""
  c = optim_config
  if c.learning_rate <= 0:
    raise UsageError(f'optim.learning_rate must be positive, got '
                     f'{c.learning_rate}')
  if not 0 <= c.warmup_steps < num_steps:
    raise UsageError(f'optim.warmup_steps={c.warmup_steps} must be in '
                     f'[0, train.num_steps={num_steps})')
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=c.learning_rate,
      warmup_steps=c.warmup_steps, decay_steps=num_steps,
      end_value=c.learning_rate * c.min_lr_ratio)


def decay_mask(params):
  """True for parameters that get weight decay: those with 2+ dimensions."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_config, schedule: optax.Schedule, num_layers: int = 0
                   ) -> optax.GradientTransformation:
  """AdamW with clipping, and the by-name settings of the module docstring
  (`num_layers`: the model's blocks per stack, for layer_decay)."""
  c = optim_config
  if c.name != 'adamw':
    raise UsageError(f"optim.name={c.name!r} is not supported; use 'adamw'")
  if not 0 < c.layer_decay <= 1:
    raise UsageError(f'optim.layer_decay must be in (0, 1], got '
                     f'{c.layer_decay}')
  for pattern, factor in c.lr_scale:
    _compile(pattern, 'optim.lr_scale')
    if factor < 0:
      raise UsageError(f'optim.lr_scale factor for {pattern!r} must be >= 0, '
                       f'got {factor}')
  parts = []
  if c.clip_norm:
    parts.append(optax.clip_by_global_norm(c.clip_norm))
  parts.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps,
                           weight_decay=c.weight_decay, mask=decay_mask))
  if c.lr_scale or c.layer_decay != 1:
    parts.append(scale_by_name(
        lambda name: _lr_factor(name, c.lr_scale, c.layer_decay, num_layers)))
  optimizer = optax.chain(*parts)
  if not c.freeze:
    return optimizer
  frozen = [_compile(p, 'optim.freeze') for p in c.freeze]
  return optax.multi_transform(
      {'train': optimizer, 'frozen': optax.set_to_zero()},
      lambda params: _freeze_labels(params, frozen))


def param_name(path) -> str:
  """'block_0/mlp/wi/kernel' from a pytree path (dict keys only, so the
  logical-axis boxes of abstract parameters do not change it)."""
  return '/'.join(str(k.key) for k in path
                  if isinstance(k, jax.tree_util.DictKey))


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


def _lr_factor(name: str, lr_scale, layer_decay: float, num_layers: int):
  for pattern, factor in lr_scale:
    if re.fullmatch(pattern, name):
      return factor
  if layer_decay == 1:
    return 1.0
  parts = name.split('/')
  blocks = [p for p in parts if re.fullmatch(r'block_\d+', p)]
  if blocks:
    return layer_decay ** (num_layers - int(blocks[0][len('block_'):]))
  if 'blocks' in parts:  # Scanned: one factor per layer, on the layer axis.
    return layer_decay ** (num_layers - np.arange(num_layers))
  if any(part in _EMBEDDINGS for part in parts):
    return layer_decay ** (num_layers + 1)
  return 1.0


# Parameters below the first block, which layer_decay slows the most.
_EMBEDDINGS = ('embed', 'position_embed', 'token_type_embed', 'embed_norm')


def _freeze_labels(params, frozen: list[re.Pattern]):
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


def _compile(pattern: str, key: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UsageError(f'{key}: {pattern!r} is not a regular expression ({e})')
