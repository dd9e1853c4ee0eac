"""Linen building blocks shared by every family: embeddings, dense layers
(with quantized kernels and LoRA adapters), norms and the feed-forward block.

Every parameter is created with logical axis names; `lm/sharding.py` maps
them to mesh axes. (Attention is lm/model/attention.py, positions
lm/model/positions.py.)

Shape letters in names: B batch, L query length, S key length, D model width,
N query heads, K key/value heads, H head width, F feed-forward width, V vocab.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lm.kernels import matmul
from lm.model import quantized
from lm.model.quantized import Quant

Dtype = Any


def logical(init, axes):
  """An initializer that tags its parameter with logical axis names."""
  return nn.with_logical_partitioning(init, axes)


class Embed(nn.Module):
  """Token embedding; `attend` reuses the table as a tied output layer.

  Quantized (`quant`), the table has one scale per row (int8) or per group of
  a row (int4); a lookup dequantizes only the rows it gathers.
  """

  num_embeddings: int
  features: int
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axes: tuple[str, str] = ('vocab', 'embed')
  quant: Quant = quantized.NONE
  # Factorized (ALBERT): a table of factor_dim-wide rows and a 'projection'
  # [factor_dim, features] that lookups go through and `attend` reverses.
  factor_dim: int = 0

  def setup(self):
    width = self.factor_dim or self.features
    shape = (self.num_embeddings, width)
    if self.factor_dim:
      self.projection = self.param(
          'projection', logical(nn.initializers.normal(
              1 / np.sqrt(self.factor_dim)), (None, self.axes[1])),
          (self.factor_dim, self.features), self.param_dtype)
    if self.quant.bits:
      self.table = quantized.quantized_param(
          self, 'embedding', shape, self.axes, self.param_dtype, (-1,),
          self.quant)
    else:
      self.table = self.param(
          'embedding', logical(nn.initializers.normal(self.init_std),
                               self.axes), shape, self.param_dtype)

  @property
  def embedding(self):
    """The whole table as floats."""
    if self.quant.bits:
      return quantized.dequantize(*self.table, -1, self.quant)
    return self.table

  def __call__(self, ids):
    if self.quant.bits:
      q, scale = (jnp.take(t, ids, axis=0) for t in self.table)
      rows = quantized.dequantize(q, scale, -1, self.quant).astype(self.dtype)
    else:
      rows = jnp.take(self.table, ids, axis=0).astype(self.dtype)
    if self.factor_dim:
      rows = rows @ self.projection.astype(self.dtype)
    return rows

  def attend(self, x_BLD):
    """float32 logits against every row (lm/kernels/matmul.py)."""
    if self.factor_dim:
      x_BLD = x_BLD @ self.projection.astype(self.dtype).T
    return matmul.tied_logits(x_BLD, self.embedding.astype(self.dtype))


class Dense(nn.Module):
  """x W + b over the last axis, [..., in] -> [..., features].

  `nn.Dense`'s parameter names and shapes ('kernel' [in, features], 'bias'),
  with logical axes and optional quantized kernels.
  """

  features: int
  axes: tuple[str, str]
  use_bias: bool = True
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: Quant = quantized.NONE
  # LoRA (Hu et al., 2021): with rank > 0 and this layer's name among the
  # targets, y += (alpha / rank) * x A B, with A [in, rank] and B [rank,
  # out] ('lora_a', 'lora_b'; B starts at zero, so training starts from the
  # layer as it was).
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()
  # The output's dtype where it differs from `dtype`: float32 for logits,
  # accumulated in float32 from `dtype` operands.
  out_dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x):
    return _project(self, x, (x.shape[-1], self.features), (-2,),
                    (self.features,), self.axes[-1:])


def _project(module, x, shape, contract, features, bias_axes):
  """x times `module`'s 'kernel' of `shape` (contracted on `contract`), plus
  its 'bias' if it has one: the body of Dense and HeadsDense."""
  kernel = quantized.kernel_param(
      module, 'kernel', shape, module.axes,
      nn.initializers.normal(module.init_std), module.param_dtype, contract,
      module.quant)
  # One 2-D matmul over the merged input and output axes (reshapes of
  # row-major arrays, free), which every backend runs as one product; the
  # kernel layer (lm/kernels/matmul.py) picks its weight gradient.
  x_flat = x.reshape(x.shape[:-len(contract)] + (-1,))
  y = matmul.dense(x_flat.astype(module.dtype), kernel.reshape(
      x_flat.shape[-1], -1).astype(module.dtype), module.out_dtype)
  y = y.reshape(x.shape[:-len(contract)] + tuple(features))
  if module.use_bias:
    bias = module.param('bias', logical(nn.initializers.zeros, bias_axes),
                        features, module.param_dtype)
    y += bias.astype(module.dtype)
  if module.lora_rank and module.name in module.lora_targets:
    y += _lora(module, x, shape, len(contract))
  return y


def _lora(module, x, shape, num_in: int):
  """The low-rank update (alpha / r) x A B of a kernel of `shape` whose first
  `num_in` axes are its inputs."""
  r = module.lora_rank
  in_shape, out_shape = shape[:num_in], shape[num_in:]
  in_axes, out_axes = module.axes[:num_in], module.axes[num_in:]
  a = module.param('lora_a', logical(nn.initializers.normal(
      1 / np.sqrt(np.prod(in_shape))), in_axes + (None,)), in_shape + (r,),
                   module.param_dtype)
  b = module.param('lora_b', logical(nn.initializers.zeros,
                                     (None,) + out_axes), (r,) + out_shape,
                   module.param_dtype)
  x_flat = x.reshape(x.shape[:x.ndim - num_in] + (-1,)).astype(module.dtype)
  h = x_flat @ a.reshape(-1, r).astype(module.dtype)
  out = h @ b.reshape(r, -1).astype(module.dtype)
  return (module.lora_alpha / r) * out.reshape(x.shape[:x.ndim - num_in] +
                                               out_shape)


class HeadsDense(Dense):
  """A dense layer into or out of heads: [.., D] -> [.., N, H] (`to_heads`)
  or [.., N, H] -> [.., D].

  The kernel is created in its final 3-D shape (what `nn.DenseGeneral` names
  'kernel' and 'bias', with the same shapes), so its logical axes stay valid
  when a mesh is set; DenseGeneral reshapes a 2-D kernel, which the sharding
  annotation of a 3-D one rejects (flax issue 3676).
  """

  features: tuple[int, ...]
  axes: tuple[str, ...]
  to_heads: bool = True

  @nn.compact
  def __call__(self, x):
    if self.to_heads:  # [.., D] x [D, N, H]
      return _project(self, x, (x.shape[-1],) + self.features, (-3,),
                      self.features, self.axes[1:])
    # [.., N, H] x [N, H, D]
    return _project(self, x, x.shape[-2:] + self.features, (-3, -2),
                    self.features, self.axes[-1:])


def make_norm(kind: str, eps: float, dtype: Dtype, param_dtype: Dtype,
              name: str) -> nn.Module:
  """LayerNorm (scale and bias) or RMSNorm (scale only)."""
  ones = logical(nn.initializers.ones, ('embed',))
  if kind == 'layernorm':
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=ones,
        bias_init=logical(nn.initializers.zeros, ('embed',)), name=name)
  if kind == 'rmsnorm':
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      scale_init=ones, name=name)
  raise ValueError(f'unknown norm {kind!r}')


ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': nn.gelu,  # tanh approximation, as GPT-2
    'gelu_exact': lambda x: nn.gelu(x, approximate=False),
    'silu': nn.silu,
}


class Mlp(nn.Module):
  """Feed-forward block: act(x W_in) W_out, or gated: (act(x W_0) * x W_1) W_out.

  `activation` is 'relu', 'gelu', 'gelu_exact' or 'silu'; `gated` turns
  'silu' into SwiGLU and 'gelu' into GeGLU (Shazeer, 2020).
  """

  d_ff: int
  activation: str = 'gelu'
  gated: bool = False
  use_bias: bool = True
  dropout_rate: float = 0.0
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  quant: Quant = quantized.NONE
  lora: dict = dataclasses.field(default_factory=dict)  # Dense's lora_*

  @nn.compact
  def __call__(self, x_BLD, deterministic: bool = True):
    d_model = x_BLD.shape[-1]

    def dense(features, axes, std, name):
      return Dense(features, axes, use_bias=self.use_bias, init_std=std,
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   quant=self.quant, name=name, **self.lora)

    act = ACTIVATIONS[self.activation]
    if self.gated:
      h_BLF = act(dense(self.d_ff, ('embed', 'mlp'), self.init_std, 'wi_0')(
          x_BLD)) * dense(self.d_ff, ('embed', 'mlp'), self.init_std, 'wi_1')(
              x_BLD)
    else:
      h_BLF = act(dense(self.d_ff, ('embed', 'mlp'), self.init_std, 'wi')(
          x_BLD))
    h_BLF = nn.with_logical_constraint(h_BLF, ('batch', 'length', 'mlp'))
    h_BLF = nn.Dropout(self.dropout_rate)(h_BLF, deterministic=deterministic)
    return dense(d_model, ('mlp', 'embed'), self.out_init_std, 'wo')(h_BLF)
