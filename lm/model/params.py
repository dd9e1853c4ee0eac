"""A model's parameters: fresh, abstract (shapes only), counted and named.

Parameters are plain pytrees of arrays, keyed by module names; a
parameter's name is its '/'-joined path, e.g. 'block_3/mlp/wi/kernel' (what
optim.freeze, prune.targets and the Hugging Face tables match).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def model_inputs(model: nn.Module, batch: dict) -> dict:
  """The keyword arguments a model takes from a batch (keys it has)."""
  return {arg: batch[key] for key, arg in model.batch_inputs.items()
          if key in batch}


def _example_inputs(model: nn.Module, seq_len: int) -> dict:
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return model_inputs(model, {'inputs': tokens, 'encoder_inputs': tokens})


def init_params(model: nn.Module, rng: jax.Array, seq_len: int = 8) -> Any:
  """Fresh parameters as a plain pytree (logical-axis boxes removed)."""
  return nn.unbox(model.init(rng, **_example_inputs(model, seq_len))[
      'params'])


def logical_abstract_params(model: nn.Module) -> Any:
  """Shapes of the parameters in `nn.Partitioned` boxes that name their
  logical axes (what lm/sharding.py turns into shardings)."""
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), **_example_inputs(model, 8))['params'])


def abstract_params(model: nn.Module) -> Any:
  """Shapes and dtypes of the parameters, without allocating them."""
  return nn.unbox(logical_abstract_params(model))


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def param_name(path) -> str:
  """'block_0/mlp/wi/kernel' from a pytree path (dict keys only, so the
  logical-axis boxes of abstract parameters do not change it)."""
  return '/'.join(str(k.key) for k in path
                  if isinstance(k, jax.tree_util.DictKey))


def named_leaves(params: Any) -> dict[str, Any]:
  """{parameter name: leaf} in the tree's order."""
  return {param_name(path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(params)[0]}
