"""The optax chain from `config.optim`: AdamW, warmup + cosine, clipping.

Weight decay applies to matrices only (kernels and embeddings), never to
norm scales or biases, as in GPT-2 and nanoGPT.
"""

import jax
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


def make_optimizer(optim_config, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  c = optim_config
  if c.name != 'adamw':
    raise UsageError(f"optim.name={c.name!r} is not supported; use 'adamw'")
  parts = []
  if c.clip_norm:
    parts.append(optax.clip_by_global_norm(c.clip_norm))
  parts.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps,
                           weight_decay=c.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
