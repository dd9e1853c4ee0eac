"""Transformer models built from `config.model`.

`ModelConfig` is the typed, validated, hashable form of the `model` section of
an ml_collections config; `build_model` turns it into a Linen module.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm import layers
from lm.errors import UsageError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
           'float16': jnp.float16}
_CHOICES = {
    'family': ('decoder',),
    'norm': ('layernorm', 'rmsnorm'),
    'norm_position': ('pre', 'post'),
    'activation': tuple(layers.ACTIVATIONS),
    'position': ('learned', 'sinusoidal', 'rotary', 'none'),
    'dtype': tuple(_DTYPES),
    'param_dtype': tuple(_DTYPES),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture hyperparameters; `num_kv_heads` < `num_heads` gives GQA/MQA."""

  family: str = 'decoder'
  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 0  # 0 means num_heads (plain multi-head attention)
  head_dim: int = 0  # 0 means d_model // num_heads
  d_ff: int = 256
  activation: str = 'gelu'
  gated_mlp: bool = False  # with activation='silu': SwiGLU (Llama)
  norm: str = 'layernorm'
  norm_position: str = 'pre'
  norm_eps: float = 1e-5
  position: str = 'learned'
  max_len: int = 1024
  rotary_theta: float = 10_000.0
  tie_embeddings: bool = True
  use_bias: bool = True
  dropout_rate: float = 0.0
  init_std: float = 0.02
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_width(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def context_limit(self) -> int | None:
    """The longest sequence the model can take: learned tables end there."""
    return self.max_len if self.position == 'learned' else None

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict | dict
                 ) -> 'ModelConfig':
    """Validates a config's `model` section; raises UsageError naming the key."""
    values = dict(model_config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise UsageError(f'unknown model config key(s) {unknown}; '
                       f'known keys are {sorted(known)}')
    config = cls(**values)
    config.validate()
    return config

  def validate(self):
    for key, choices in _CHOICES.items():
      if getattr(self, key) not in choices:
        raise UsageError(f'model.{key}={getattr(self, key)!r} is not one of '
                         f'{list(choices)}')
    for key in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff',
                'max_len'):
      if getattr(self, key) <= 0:
        raise UsageError(f'model.{key} must be positive, got '
                         f'{getattr(self, key)}')
    if not self.head_dim and self.d_model % self.num_heads:
      raise UsageError(f'model.d_model={self.d_model} is not divisible by '
                       f'model.num_heads={self.num_heads}; set model.head_dim')
    if self.num_heads % self.kv_heads:
      raise UsageError(f'model.num_heads={self.num_heads} is not a multiple of '
                       f'model.num_kv_heads={self.kv_heads}')
    if self.position == 'rotary' and self.head_width % 2:
      raise UsageError('rotary positions need an even head width, got '
                       f'{self.head_width}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UsageError(f'model.dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate}')


class DecoderBlock(nn.Module):
  """Causal self-attention and feed-forward, each with a residual."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, deterministic: bool, decode: bool):
    c = self.config
    dtype, param_dtype = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    # GPT-2 scales the residual projections by 1/sqrt(2 * num_layers).
    out_std = c.init_std / (2 * c.num_layers) ** 0.5
    attention = layers.Attention(
        num_heads=c.num_heads, num_kv_heads=c.kv_heads, head_dim=c.head_width,
        causal=True,
        rotary_theta=c.rotary_theta if c.position == 'rotary' else None,
        use_bias=c.use_bias, init_std=c.init_std, out_init_std=out_std,
        dtype=dtype, param_dtype=param_dtype, name='attention')
    mlp = layers.Mlp(
        d_ff=c.d_ff, activation=c.activation, gated=c.gated_mlp,
        use_bias=c.use_bias, init_std=c.init_std, out_init_std=out_std,
        dtype=dtype, param_dtype=param_dtype, name='mlp')
    norm_1 = layers.make_norm(c.norm, c.norm_eps, dtype, param_dtype,
                              'attention_norm')
    norm_2 = layers.make_norm(c.norm, c.norm_eps, dtype, param_dtype,
                              'mlp_norm')
    dropout = nn.Dropout(c.dropout_rate)

    def attend(h):
      return dropout(attention(h, positions_BL, decode=decode),
                     deterministic=deterministic)

    def feed_forward(h):
      return dropout(mlp(h, deterministic), deterministic=deterministic)

    if c.norm_position == 'pre':
      x_BLD = x_BLD + attend(norm_1(x_BLD))
      x_BLD = x_BLD + feed_forward(norm_2(x_BLD))
    else:
      x_BLD = norm_1(x_BLD + attend(x_BLD))
      x_BLD = norm_2(x_BLD + feed_forward(x_BLD))
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))


class DecoderOnly(nn.Module):
  """GPT-2 / Llama-style causal language model: tokens -> next-token logits."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, *,
               deterministic: bool = True, decode: bool = False):
    c = self.config
    dtype, param_dtype = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]),
                                      tokens_BL.shape)
    embed = layers.Embed(c.vocab_size, c.d_model, c.init_std, dtype,
                         param_dtype, name='embed')
    x_BLD = embed(tokens_BL)
    if c.position == 'learned':
      x_BLD += layers.Embed(c.max_len, c.d_model, c.init_std / 2, dtype,
                            param_dtype, axes=('position', 'embed'),
                            name='position_embed')(positions_BL)
    elif c.position == 'sinusoidal':
      x_BLD += layers.sinusoidal_positions(positions_BL, c.d_model, dtype)
    # A zero the tests differentiate against to check causality.
    x_BLD = self.perturb('embedded', x_BLD)
    x_BLD = nn.Dropout(c.dropout_rate)(x_BLD, deterministic=deterministic)
    for i in range(c.num_layers):
      x_BLD = DecoderBlock(c, name=f'block_{i}')(x_BLD, positions_BL,
                                                 deterministic, decode)
    if c.norm_position == 'pre':
      x_BLD = layers.make_norm(c.norm, c.norm_eps, dtype, param_dtype,
                               'final_norm')(x_BLD)
    if c.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = nn.Dense(
          c.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
          kernel_init=layers.logical(nn.initializers.normal(c.init_std),
                                     ('embed', 'vocab')),
          name='head')(x_BLD)
    return nn.with_logical_constraint(logits_BLV.astype(jnp.float32),
                                      ('batch', 'length', 'vocab'))


def build_model(config: ModelConfig) -> nn.Module:
  if config.family == 'decoder':
    return DecoderOnly(config)
  raise UsageError(f'model.family={config.family!r} is not supported')


def init_params(model: nn.Module, rng: jax.Array, seq_len: int = 8) -> Any:
  """Fresh parameters as a plain pytree (logical-axis boxes removed)."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return nn.unbox(model.init(rng, tokens)['params'])


def abstract_params(model: nn.Module) -> Any:
  """Shapes and dtypes of the parameters, without allocating them."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
