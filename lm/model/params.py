"""A model's parameters: fresh, abstract (shapes only), counted, named and
described.

Parameters are plain pytrees of arrays, keyed by module names; a
parameter's name is its '/'-joined path, e.g. 'block_3/mlp/wi/kernel' (what
optim.freeze, prune.targets and the Hugging Face tables match).

The names of the modules that say where a parameter sits (blocks, the
stack of scanned blocks, embeddings) are defined here and given by the
model (lm/model/blocks.py, the families); `describe` reads them back with
each weight matrix's own record of which axes it contracts (its `Kernel`
box): the optimizer asks `describe`, never a pattern of its own.
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from lm.errors import UsageError

# Block i's module, unscanned (and group i's with shared layers).
BLOCK = 'block_{}'
# All blocks scanned into one module, their parameters stacked on a leading
# LAYERS_AXIS.
STACK = 'blocks'
LAYERS_AXIS = 'layers'
# Leading axes of a weight matrix that index copies of it, not its rows.
BATCH_AXES = (LAYERS_AXIS, 'expert')
# The modules below the first block.
EMBED = 'embed'
POSITION_EMBED = 'position_embed'
TOKEN_TYPE_EMBED = 'token_type_embed'
EMBED_NORM = 'embed_norm'
EMBEDDINGS = (EMBED, POSITION_EMBED, TOKEN_TYPE_EMBED, EMBED_NORM)


class Kernel(nn.LogicallyPartitioned):
  """A weight matrix's box: its logical axes, and how many of them (after
  leading batch axes, such as scanned layers' or experts') are the inputs
  it contracts; the rest are its outputs."""

  inputs: int = flax.struct.field(default=1, pytree_node=False)


def kernel_init(init, axes, inputs: int):
  """`init`, its value boxed as a Kernel of logical `axes` whose first
  `inputs` (non-batch) axes are contracted."""

  def boxed(*args, **kwargs):
    return Kernel(init(*args, **kwargs), tuple(axes), inputs=inputs)

  return boxed


@dataclasses.dataclass(frozen=True)
class ParamInfo:
  """Where a parameter sits and what it is, as the model describes it.

  layer: the index of the block it belongs to (None outside blocks, and for
    a stack's, which hold every layer on their leading axis).
  stacked: a scanned stack's parameter, one slice per layer.
  embedding: below the first block (embeddings and their norm).
  matrix: (input axes, output axes) of a weight matrix inside a block,
    after its batch axes; None for anything else.
  """

  layer: int | None
  stacked: bool
  embedding: bool
  matrix: tuple[tuple[int, ...], tuple[int, ...]] | None


def describe(boxed_params: Any) -> dict[str, ParamInfo]:
  """{parameter name: ParamInfo} of parameters as the model creates them,
  in their logical-axis boxes (logical_abstract_params)."""
  block = re.compile(re.escape(BLOCK).replace(r'\{\}', r'(\d+)'))
  described = {}
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  for path, leaf in leaves:
    parts = param_name(path).split('/')
    layers = [int(m.group(1)) for m in map(block.fullmatch, parts) if m]
    stacked = STACK in parts
    matrix = None
    if isinstance(leaf, Kernel) and (layers or stacked):
      batch = _batch_axes(leaf.names)
      middle = batch + leaf.inputs
      matrix = (tuple(range(batch, middle)),
                tuple(range(middle, len(leaf.names))))
    described[param_name(path)] = ParamInfo(
        layer=layers[0] if layers else None, stacked=stacked,
        embedding=any(part in EMBEDDINGS for part in parts), matrix=matrix)
  return described


def _batch_axes(names) -> int:
  """How many leading axes of a matrix index copies of it (a stack's
  layers, MoE experts)."""
  count = 0
  while count < len(names) and names[count] in BATCH_AXES:
    count += 1
  return count


def name_pattern(pattern: str, key: str) -> re.Pattern:
  """A user's regular expression over parameter names (config `key`), or
  UsageError naming what is wrong with it."""
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UsageError(f'{key}: {pattern!r} is not a regular expression ({e})')


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


def logical_abstract_params(model: nn.Module, seq_len: int = 8) -> Any:
  """Shapes of the parameters in `nn.Partitioned` boxes that name their
  logical axes (what lm/sharding.py turns into shardings), from a trace of
  the model over `seq_len` tokens."""
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), **_example_inputs(model, seq_len))['params'])


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
