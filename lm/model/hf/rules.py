"""The pieces of a Hugging Face layout: rules pairing tensors with lm
parameters, both ways, and the Architecture that bundles a layout.

A layout (one file per architecture beside this one) pairs each Hugging Face
tensor with the lm parameter(s) it holds and a transform and its inverse, so
import and export are the same table read in opposite directions, and a round
trip is exact. Hugging Face stores linear layers as [out, in]; lm keeps
[in, out] kernels with attention heads as their own axis. Each family
registers its layouts (lm/model/registry.py); lm/convert reads them.
"""

import dataclasses
from typing import Any, Callable

import numpy as np

from lm.errors import UsageError
from lm.model.config import ModelConfig

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """One HF tensor <-> one or more lm parameters."""

  hf_name: str
  lm_paths: tuple[Path, ...]
  to_lm: Callable[[np.ndarray], list[np.ndarray]]
  to_hf: Callable[[list[np.ndarray]], np.ndarray]


def param_path(name: str) -> Path:
  """('block_0', 'mlp', 'wi', 'kernel') from 'block_0/mlp/wi/kernel'."""
  return tuple(name.split('/'))


def same(hf_name, lm_name):
  return Rule(hf_name, (param_path(lm_name),), lambda x: [x], lambda xs: xs[0])


def linear(hf_name, lm_name):
  """HF [out, in] weight <-> lm [in, out] kernel."""
  return Rule(hf_name, (param_path(lm_name),), lambda x: [x.T],
              lambda xs: xs[0].T)


def heads_in(hf_name, lm_name, heads, head_dim):
  """A q/k/v projection: HF [heads*head_dim, D] <-> lm [D, heads, head_dim]."""
  def to_lm(x):
    return [x.T.reshape(x.shape[1], heads, head_dim)]
  def to_hf(xs):
    return xs[0].reshape(xs[0].shape[0], heads * head_dim).T
  return Rule(hf_name, (param_path(lm_name),), to_lm, to_hf)


def heads_bias(hf_name, lm_name, heads, head_dim):
  return Rule(hf_name, (param_path(lm_name),),
              lambda x: [x.reshape(heads, head_dim)],
              lambda xs: xs[0].reshape(heads * head_dim))


def heads_out(hf_name, lm_name, heads, head_dim):
  """The output projection: HF [D, heads*head_dim] <-> lm [heads, head_dim,
  D]."""
  def to_lm(x):
    return [x.T.reshape(heads, head_dim, x.shape[0])]
  def to_hf(xs):
    return xs[0].reshape(heads * head_dim, xs[0].shape[-1]).T
  return Rule(hf_name, (param_path(lm_name),), to_lm, to_hf)


def norm(hf_prefix, lm_name, with_bias=True, weight='weight', bias='bias'):
  rules = [same(f'{hf_prefix}.{weight}', f'{lm_name}/scale')]
  if with_bias:
    rules.append(same(f'{hf_prefix}.{bias}', f'{lm_name}/bias'))
  return rules


def attention_rules(c: ModelConfig, hf: dict[str, str], lm: str,
                     with_bias: bool):
  """q/k/v/o of one attention layer; `hf` maps 'q','k','v','o' to prefixes."""
  n, k, h = c.num_heads, c.kv_heads, c.head_width
  rules = [heads_in(f'{hf["q"]}.weight', f'{lm}/query/kernel', n, h),
           heads_in(f'{hf["k"]}.weight', f'{lm}/key/kernel', k, h),
           heads_in(f'{hf["v"]}.weight', f'{lm}/value/kernel', k, h),
           heads_out(f'{hf["o"]}.weight', f'{lm}/out/kernel', n, h)]
  if with_bias:
    rules += [heads_bias(f'{hf["q"]}.bias', f'{lm}/query/bias', n, h),
              heads_bias(f'{hf["k"]}.bias', f'{lm}/key/bias', k, h),
              heads_bias(f'{hf["v"]}.bias', f'{lm}/value/bias', k, h),
              same(f'{hf["o"]}.bias', f'{lm}/out/bias')]
  return rules


_ACTIVATIONS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu',
                'gelu_pytorch_tanh': 'gelu', 'relu': 'relu', 'silu': 'silu'}


def activation_from_hf(name: str) -> str:
  if name not in _ACTIVATIONS:
    raise UsageError(f'activation {name!r} is not supported; lm has '
                     f'{sorted(_ACTIVATIONS)}')
  return _ACTIVATIONS[name]


def activation_to_hf(name: str) -> str:
  return {'gelu_exact': 'gelu', 'gelu': 'gelu_new'}.get(name, name)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One Hugging Face model_type: its tensor table and config.json, both
  ways."""

  rules: Callable[[ModelConfig], list[Rule]]
  config_from_hf: Callable[[dict, set[str]], dict]
  config_to_hf: Callable[[ModelConfig], dict]
  # What an lm config of the family must have to be saved in this layout:
  # a value, or a (predicate, description) pair.
  requires: dict[str, Any]


def _get(tree: dict, lm_path: Path):
  for key in lm_path:
    tree = tree[key]
  return tree


def _set(tree: dict, lm_path: Path, value):
  for key in lm_path[:-1]:
    tree = tree.setdefault(key, {})
  tree[lm_path[-1]] = value


def params_from_hf(rules: list[Rule], tensors: dict[str, np.ndarray]) -> dict:
  """lm params from HF tensors; tensors no rule reads are ignored."""
  params = {}
  missing = [r.hf_name for r in rules if r.hf_name not in tensors]
  if missing:
    raise UsageError(f'the checkpoint lacks {len(missing)} tensor(s) its '
                     f'config implies, e.g. {missing[:3]}')
  for rule in rules:
    for lm_path, value in zip(rule.lm_paths,
                              rule.to_lm(tensors[rule.hf_name])):
      _set(params, lm_path, np.ascontiguousarray(value))
  return params


def params_to_hf(rules: list[Rule], params: dict) -> dict[str, np.ndarray]:
  return {r.hf_name: np.ascontiguousarray(
      r.to_hf([np.asarray(_get(params, p)) for p in r.lm_paths]))
          for r in rules}
