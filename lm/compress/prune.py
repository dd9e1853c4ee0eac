"""Magnitude pruning: unstructured or N:M, one-shot or gradual during training.

`config.prune` (configs/base.py):
  pattern      'none', 'unstructured' (the `sparsity` smallest weights of each
               tensor) or 'N:M' such as '2:4' (N of every M consecutive
               weights along the kernel's input axis are kept, the pattern
               sparse tensor cores run; sparsity 1 - N/M)
  sparsity     unstructured: the final fraction of zeros
  start_step, end_step, every
               gradual pruning (Zhu & Gupta, 2017): sparsity grows as
               s * (1 - (1 - t)^3), t going 0 -> 1 from start_step to
               end_step, masks recomputed every `every` steps; start_step =
               end_step prunes at once
  targets      regex of the parameter names pruned (whole-name match)

During training the masks live in the optimizer state (so in checkpoints):
gradients of pruned weights are zeroed before the optimizer and the weights
are set to exactly zero after each update, so they never come back. A mask
only ever loses weights. Under N:M, gradual pruning first removes the
smallest of the weights N:M would remove, so the pattern is exact at the end.
"""

import dataclasses
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lm import sections
from lm.errors import UsageError
from lm.model import params as model_params
from lm.model import quantized
from lm.model import registry
from lm.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class PruneConfig(sections.Section):
  """Magnitude pruning during training: 'unstructured' or
  'N:M' (e.g. '2:4'), reaching `sparsity` (unstructured) on a cubic
  schedule from start_step to end_step, masks updated every `every` steps,
  in the kernels whose names match `targets`."""

  NAME = 'prune'
  pattern: str = 'none'
  sparsity: float = 0.5
  start_step: int = 0
  end_step: int = 0
  every: int = 10
  targets: str = r'.*kernel'

  @property
  def n_of_m(self) -> tuple[int, int] | None:
    if ':' not in self.pattern:
      return None
    n, m = (int(x) for x in self.pattern.split(':'))
    return n, m

  @property
  def final_sparsity(self) -> float:
    nm = self.n_of_m
    return 1 - nm[0] / nm[1] if nm else self.sparsity

  def validate(self):
    if self.pattern not in ('none', 'unstructured') and not re.fullmatch(
        r'\d+:\d+', self.pattern):
      raise UsageError(f"prune.pattern={self.pattern!r} is not 'none', "
                       "'unstructured' or 'N:M' such as '2:4'")
    nm = self.n_of_m
    if nm and not 0 < nm[0] < nm[1]:
      raise UsageError(f'prune.pattern={self.pattern!r} needs 0 < N < M')
    if not 0 <= self.sparsity < 1:
      raise UsageError(f'prune.sparsity must be in [0, 1), got '
                       f'{self.sparsity}')
    if not 0 <= self.start_step <= self.end_step or self.every < 1:
      raise UsageError(
          f'prune.start_step={self.start_step} <= end_step={self.end_step} '
          f'and every={self.every} >= 1 are needed')
    try:
      re.compile(self.targets)
    except re.error as e:
      raise UsageError(f'prune.targets: {self.targets!r} is not a regular '
                       f'expression ({e})') from e


def input_axes(model_config: ModelConfig) -> dict[str, int]:
  """{kernel name: its (last) input axis, negative}, for every kernel that
  quantization would treat, read from the int8 model's scale shapes."""
  model = registry.build_model(dataclasses.replace(model_config,
                                                   quant='int8'))
  out = {}
  shapes = {name: leaf.shape for name, leaf in model_params.named_leaves(
      model_params.abstract_params(model)).items()}
  for name, shape in shapes.items():
    if name.endswith(quantized.SCALE_SUFFIX):
      kernel = shapes[name[:-len(quantized.SCALE_SUFFIX)]]
      reduced = [i for i in range(len(kernel))
                 if shape[i] == 1 and kernel[i] != 1]
      out[name[:-len(quantized.SCALE_SUFFIX)]] = reduced[-1] - len(kernel)
  return out


def sparsity_at(step, c: PruneConfig):
  """The cubic schedule's sparsity at `step` (a traced int is fine)."""
  span = max(c.end_step - c.start_step, 1)
  t = jnp.clip((step - c.start_step + (c.end_step == c.start_step)) / span,
               0.0, 1.0)
  return c.final_sparsity * (1 - (1 - t) ** 3)


def _ranks(x):
  """Each entry's rank (0 = smallest) within the last axis."""
  return jnp.argsort(jnp.argsort(x, axis=-1), axis=-1)


def magnitude_mask(w, sparsity, c: PruneConfig, axis: int):
  """True where `w` keeps its weight at `sparsity` (traced is fine)."""
  magnitude = jnp.abs(w.astype(jnp.float32))
  nm = c.n_of_m
  if nm:
    n, m = nm
    if w.shape[axis] % m:
      raise UsageError(f'{c.pattern} pruning needs input axes that are '
                       f'multiples of {m}; a kernel has shape {w.shape}')
    moved = jnp.moveaxis(magnitude, axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (-1, m))
    candidate = (_ranks(groups) < m - n).reshape(moved.shape)
    candidate = jnp.moveaxis(candidate, -1, axis)
    # Of the candidates, the smallest fraction sparsity / final go first.
    count = jnp.floor(sparsity / c.final_sparsity * candidate.sum())
    order = jnp.where(candidate, magnitude, jnp.inf).ravel()
  else:
    count = jnp.floor(sparsity * w.size)
    order = magnitude.ravel()
  return (_ranks(order) >= count).reshape(w.shape)


def _targets(params, c: PruneConfig) -> Any:
  pattern = re.compile(c.targets)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(pattern.fullmatch(model_params.param_name(path))),
      params)


def prune_params(params, c: PruneConfig, axes: dict[str, int]):
  """One-shot: each target kernel at the final sparsity."""
  targets = _targets(params, c)
  if not any(jax.tree.leaves(targets)):
    raise UsageError(f'prune.targets={c.targets!r} matches no parameter')
  return jax.tree_util.tree_map_with_path(
      lambda path, w, target: jnp.where(magnitude_mask(
          w, c.final_sparsity, c,
          axes.get(model_params.param_name(path), -2)), w,
                                        0) if target else w,
      params, targets)


class PruneState(NamedTuple):
  inner: Any
  masks: Any  # bool per parameter; all True for parameters not pruned
  count: jax.Array


def masked(inner: optax.GradientTransformation, c: PruneConfig,
           axes: dict[str, int]) -> optax.GradientTransformation:
  """`inner` with gradual magnitude pruning (see the module docstring)."""

  def init(params):
    return PruneState(inner.init(params),
                      jax.tree.map(lambda p: jnp.ones(p.shape, bool), params),
                      jnp.zeros([], jnp.int32))

  def update(grads, state, params):
    grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0), grads, state.masks)
    updates, inner_state = inner.update(grads, state.inner, params)
    step = state.count
    due = ((step >= c.start_step) & (step <= c.end_step) &
           ((step - c.start_step) % c.every == 0)) | (step == c.end_step)
    sparsity = sparsity_at(step, c)

    def new_mask(path, p, u, old, target):
      if not target:
        return old
      value = jnp.where(old, p + u, 0)
      axis = axes.get(model_params.param_name(path), -2)
      return jax.lax.cond(due, lambda: old & magnitude_mask(
          value, sparsity, c, axis), lambda: old)

    masks = jax.tree_util.tree_map_with_path(
        new_mask, params, updates, state.masks, _targets(params, c))
    # Kept weights get their update as it is; pruned ones go to exactly 0.
    updates = jax.tree.map(lambda p, u, m: jnp.where(m, u, -p), params,
                           updates, masks)
    return updates, PruneState(inner_state, masks, step + 1)

  return optax.GradientTransformation(init, update)


def sparsity_of(params, c: PruneConfig) -> float:
  """The fraction of zeros among the target parameters."""
  targets = _targets(params, c)
  zeros = total = 0
  for w, target in zip(jax.tree.leaves(params), jax.tree.leaves(targets)):
    if target:
      zeros += int(jnp.sum(w == 0))
      total += w.size
  return zeros / max(total, 1)
