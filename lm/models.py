"""Transformer models built from `config.model`.

`ModelConfig` is the typed, validated, hashable form of the `model` section of
an ml_collections config; `build_model` turns it into a Linen module.
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm import layers
from lm import moe
from lm.compress import quantize
from lm.errors import UsageError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
           'float16': jnp.float16}
# The values each of these keys takes (validate() checks them).
CHOICES = {
    'family': ('decoder', 'encoder', 'encoder_decoder', 'lstm'),
    'norm': ('layernorm', 'rmsnorm'),
    'norm_position': ('pre', 'post'),
    'activation': tuple(layers.ACTIVATIONS),
    'position': ('learned', 'sinusoidal', 'rotary', 'relative', 'none'),
    'pooling': ('first', 'mean', 'last'),
    'dtype': tuple(_DTYPES),
    'param_dtype': tuple(_DTYPES),
    'remat': ('none', 'full', 'dots'),
    'quant': ('none', 'int8', 'int4'),
    'kv_cache': ('float', 'int8'),
    'attention': ('xla', 'blockwise'),
}
# What a rematerialized block keeps from the forward pass for the backward:
# nothing ('full': it is recomputed), or the matmul results ('dots').
_REMAT_POLICIES = {'full': None,
                   'dots': jax.checkpoint_policies.checkpoint_dots}


# The layers LoRA adapters can wrap: attention and MLP projections.
LORA_LAYERS = ('query', 'key', 'value', 'out', 'wi', 'wi_0', 'wi_1', 'wo')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture hyperparameters; `num_kv_heads` < `num_heads` gives GQA/MQA.

  family: 'decoder' (GPT-2, Llama), 'encoder' (BERT) or 'encoder_decoder'
  (the original Transformer, T5); or 'lstm', the baseline text classifier
  of lm/baselines/lstm.py (vocab_size, d_model, num_layers, num_classes,
  pooling, dropout_rate). Keys that only some families use say so.
  """

  family: str = 'decoder'  # GPT, Llama; 'encoder': BERT; 'encoder_decoder': T5
  vocab_size: int = 256  # token embeddings (and output classes of an LM)
  d_model: int = 64  # the residual stream's width
  num_layers: int = 2  # the encoder's, for encoder_decoder
  num_decoder_layers: int = 0  # encoder_decoder; 0 means num_layers
  num_heads: int = 4  # query heads
  num_kv_heads: int = 0  # 0 means num_heads (plain multi-head attention)
  head_dim: int = 0  # 0 means d_model // num_heads
  d_ff: int = 256  # the MLP's hidden width
  activation: str = 'gelu'  # the MLP's
  gated_mlp: bool = False  # with activation='silu': SwiGLU (Llama)
  norm: str = 'layernorm'  # or 'rmsnorm' (Llama, T5)
  norm_position: str = 'pre'  # 'post': after the residual add (BERT)
  norm_eps: float = 1e-5  # the norm's epsilon
  position: str = 'learned'  # how tokens know their place
  max_len: int = 1024  # the longest sequence (learned positions' table)
  rotary_theta: float = 10_000.0  # position='rotary': the base wavelength
  relative_buckets: int = 32  # position='relative' (T5)
  relative_max_distance: int = 128  # position='relative': the farthest bucket
  scale_queries: bool = True  # False: no 1/sqrt(head width) (T5)
  scale_embeddings: bool = False  # x sqrt(d_model) (original Transformer)
  embed_norm: bool = False  # a norm right after the embeddings (BERT)
  type_vocab_size: int = 0  # encoder: token-type (segment) embeddings
  pooler: bool = False  # encoder: tanh dense layer on the first token
  mlm_head: bool = True  # encoder: the masked-LM output layer
  # > 0: the model outputs class logits from a 'classifier' layer over one
  # vector per sequence: the 'first' token (BERT's [CLS], through the pooler
  # if there is one), the 'mean' of real tokens, or the 'last' real token
  # (the only one a causal decoder lets see the whole text).
  num_classes: int = 0
  pooling: str = 'first'
  # The output layer, biases, regularization and initialization.
  tie_embeddings: bool = True  # the output layer is the embedding table
  rescale_tied_head: bool = False  # d_model**-0.5 before a tied head (T5)
  use_bias: bool = True  # in dense layers and norms
  dropout_rate: float = 0.0  # on embeddings, attention and MLP outputs
  init_std: float = 0.02  # normal initializer's standard deviation
  # Compute dtype and the dtype parameters (and the optimizer) keep:
  # dtype='bfloat16' with param_dtype='float32' is mixed precision.
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  # Memory: one block compiled once and scanned over the layers (parameters
  # get a leading 'layers' axis), and recomputing blocks in the backward pass.
  scan_layers: bool = False
  remat: str = 'none'
  # Mixture of experts (lm/moe.py) in place of the MLP of every
  # `moe_every`-th block (0 experts: none).
  num_experts: int = 0
  experts_per_token: int = 2
  expert_capacity_factor: float = 1.25
  moe_every: int = 1
  router_aux_loss: float = 0.01
  router_z_loss: float = 0.001
  # Inference (lm/compress/quantize.py): weight-only 'int8' (per channel) or
  # 'int4' (in groups of `quant_group` weights) dense kernels, with token
  # embeddings and output layer in int8, written by experiments/compress.py;
  # an 'int8' KV cache.
  quant: str = 'none'
  quant_group: int = 64
  kv_cache: str = 'float'
  # LoRA adapters (lm/compress/lora.py) on the attention and MLP layers
  # named in lora_targets ('query', 'key', 'value', 'out', 'wi', 'wi_0',
  # 'wi_1', 'wo'); rank 0: none. Training then updates the adapters only.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ('query', 'value')
  # Parameter sharing (ALBERT): `share_layers` distinct blocks per stack,
  # each applied to num_layers / share_layers consecutive layers (1: one
  # block for all; 0: no sharing); token embeddings of `embed_dim` < d_model
  # with a projection to d_model, used both ways (0: d_model, no projection).
  share_layers: int = 0
  embed_dim: int = 0
  # How attention is computed: 'xla' (jax.nn.dot_product_attention, whose
  # [L, S] scores make memory quadratic in the length) or 'blockwise'
  # (lm/blockwise_attention.py: blocks of attention_block queries and keys,
  # memory linear in the length). Both give the same values.
  attention: str = 'xla'
  attention_block: int = 512

  @property
  def quantization(self) -> quantize.Quant:
    return quantize.Quant.named(self.quant, self.quant_group)

  @property
  def vocab_quantization(self) -> quantize.Quant:
    """The token embeddings' and output layer's: int8 under int4 too, as
    llama.cpp's 4-bit files keep them at 8 bits; at 4 bits they cost far
    more quality than the blocks (SmolLM2-135M: +17.8% bits per byte)."""
    if self.quant == 'int4':
      return quantize.Quant.named('int8', self.quant_group)
    return self.quantization

  @property
  def lora(self) -> dict:
    """layers.Dense's LoRA settings, or none."""
    if not self.lora_rank:
      return {}
    return dict(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                lora_targets=self.lora_targets)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_width(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

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
    if 'lora_targets' in values:  # a list when read from JSON
      values['lora_targets'] = tuple(values['lora_targets'])
    config = cls(**values)
    config.validate()
    return config

  def validate(self):
    for key, choices in CHOICES.items():
      if getattr(self, key) not in choices:
        raise UsageError(f'model.{key}={getattr(self, key)!r} is not one of '
                         f'{list(choices)}')
    for key in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff',
                'max_len', 'attention_block'):
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
    if self.family == 'lstm' and not self.num_classes:
      raise UsageError("model.family='lstm' is a classifier; set "
                       'model.num_classes')
    if self.num_classes and self.family == 'encoder_decoder':
      raise UsageError('model.num_classes (a classification head) is for '
                       "'encoder' and 'decoder' models; fine-tune an "
                       'encoder_decoder model to write the label instead')
    if self.num_classes and self.family == 'decoder' and (
        self.pooling == 'first'):
      raise UsageError("model.pooling='first' sees one token in a causal "
                       "decoder; use 'last' or 'mean'")
    for key in ('num_decoder_layers', 'type_vocab_size', 'num_classes'):
      if getattr(self, key) < 0:
        raise UsageError(f'model.{key} must be >= 0, got '
                         f'{getattr(self, key)}')
    if self.position == 'relative' and (
        self.relative_buckets < 4 or self.relative_max_distance
        <= self.relative_buckets // 2):
      raise UsageError('model.relative_buckets must be >= 4 and '
                       'model.relative_max_distance above half of it; got '
                       f'{self.relative_buckets} and '
                       f'{self.relative_max_distance}')
    if self.num_experts < 0 or self.num_experts == 1:
      raise UsageError(f'model.num_experts must be 0 (no experts) or >= 2, '
                       f'got {self.num_experts}')
    if self.num_experts and not (
        1 <= self.experts_per_token <= self.num_experts
        and self.expert_capacity_factor > 0 and self.moe_every >= 1):
      raise UsageError(
          f'model.experts_per_token={self.experts_per_token} must be in [1, '
          f'num_experts={self.num_experts}], expert_capacity_factor '
          f'({self.expert_capacity_factor}) positive and moe_every '
          f'({self.moe_every}) >= 1')
    if self.scan_layers and self.num_experts and self.moe_every != 1:
      raise UsageError('model.scan_layers repeats one block, but '
                       f'model.moe_every={self.moe_every} mixes two kinds; '
                       'set model.moe_every=1 or model.scan_layers=False')
    if (self.scan_layers or self.remat != 'none') and (
        self.position == 'relative'):
      raise UsageError("model.scan_layers and model.remat do not support "
                       "position='relative' (its bias table is shared by "
                       "the blocks); set scan_layers=False, remat='none'")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UsageError(f'model.dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate}')
    unknown = sorted(set(self.lora_targets) - set(LORA_LAYERS))
    if self.lora_rank and (unknown or not self.lora_targets):
      raise UsageError(f'model.lora_targets={list(self.lora_targets)} must '
                       f'name some of {list(LORA_LAYERS)}')
    if self.lora_rank < 0 or self.lora_alpha <= 0:
      raise UsageError(f'model.lora_rank must be >= 0 and lora_alpha > 0, '
                       f'got {self.lora_rank} and {self.lora_alpha}')
    for layers_key, count in (('num_layers', self.num_layers),
                              ('num_decoder_layers', self.decoder_layers)):
      if self.share_layers and count % self.share_layers:
        raise UsageError(f'model.{layers_key}={count} is not a multiple of '
                         f'model.share_layers={self.share_layers}')
    if self.share_layers and (self.scan_layers or self.position == 'relative'
                              or self.num_experts):
      raise UsageError('model.share_layers repeats blocks with a scan; it '
                       'does not combine with scan_layers, '
                       "position='relative' or experts")
    if not 0 <= self.embed_dim <= self.d_model:
      raise UsageError(f'model.embed_dim={self.embed_dim} must be in [0, '
                       f'd_model={self.d_model}]')
    if self.quant == 'int4' and (self.quant_group < 2 or
                                 self.quant_group % 2):
      raise UsageError(f'model.quant_group={self.quant_group} must be an '
                       'even number of weights (int4 packs two per byte)')


class TransformerBlock(nn.Module):
  """Self-attention (causal or not), optional cross-attention, feed-forward.

  Each sub-layer has a residual and a norm, before it ('pre', GPT-2, Llama,
  T5) or after the residual sum ('post', the original Transformer, BERT).
  The feed-forward is a mixture of experts when `moe` is set. Arguments are
  positional and flags are fields, as `nn.scan` and `nn.remat` need; a
  scanned block returns (output, None), the carry and a scan output.
  """

  config: ModelConfig
  causal: bool = True
  cross_attention: bool = False
  moe: bool = False
  deterministic: bool = True
  decode: bool = False
  scanned: bool = False
  ordered_positions: bool = False  # see layers.Attention

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask_BLS=None, encoded_BSD=None,
               cross_mask_BLS=None, score_bias=None):
    c = self.config
    deterministic = self.deterministic
    dtype, param_dtype = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    # GPT-2 scales the residual projections by 1/sqrt(2 * num_layers).
    out_std = c.init_std / (2 * c.num_layers) ** 0.5

    def attention(name, rotary, causal):
      return layers.Attention(
          num_heads=c.num_heads, num_kv_heads=c.kv_heads,
          head_dim=c.head_width, causal=causal,
          rotary_theta=c.rotary_theta if rotary else None,
          scale_queries=c.scale_queries, use_bias=c.use_bias,
          init_std=c.init_std, out_init_std=out_std, dtype=dtype,
          param_dtype=param_dtype, quant=c.quantization,
          kv_cache_int8=c.kv_cache == 'int8', lora=c.lora,
          block=c.attention_block if c.attention == 'blockwise' else 0,
          ordered_positions=self.ordered_positions, name=name)

    def norm(name):
      return layers.make_norm(c.norm, c.norm_eps, dtype, param_dtype, name)

    def residual(x_BLD, sublayer, norm_name):
      dropout = nn.Dropout(c.dropout_rate)
      if c.norm_position == 'pre':
        return x_BLD + dropout(sublayer(norm(norm_name)(x_BLD)),
                               deterministic=deterministic)
      return norm(norm_name)(x_BLD + dropout(sublayer(x_BLD),
                                             deterministic=deterministic))

    self_attention = attention('attention', c.position == 'rotary',
                               self.causal)
    x_BLD = residual(x_BLD, lambda h: self_attention(
        h, positions_BL, mask_BLS=mask_BLS, score_bias=score_bias,
        decode=self.decode), 'attention_norm')
    if self.cross_attention:
      cross = attention('cross_attention', False, False)
      x_BLD = residual(x_BLD, lambda h: cross(
          h, positions_BL, kv_BSD=encoded_BSD, mask_BLS=cross_mask_BLS),
                       'cross_attention_norm')
    if self.moe:
      mlp = moe.MoeMlp(
          num_experts=c.num_experts, experts_per_token=c.experts_per_token,
          capacity_factor=c.expert_capacity_factor, d_ff=c.d_ff,
          activation=c.activation, gated=c.gated_mlp, init_std=c.init_std,
          out_init_std=out_std, aux_loss_weight=c.router_aux_loss,
          z_loss_weight=c.router_z_loss, dtype=dtype,
          param_dtype=param_dtype, name='moe')
    else:
      mlp = layers.Mlp(
          d_ff=c.d_ff, activation=c.activation, gated=c.gated_mlp,
          use_bias=c.use_bias, init_std=c.init_std, out_init_std=out_std,
          dtype=dtype, param_dtype=param_dtype, quant=c.quantization,
          lora=c.lora, name='mlp')
    x_BLD = residual(x_BLD, lambda h: mlp(h, deterministic), 'mlp_norm')
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    return (x_BLD, None) if self.scanned else x_BLD


def _run_stack(module: nn.Module, c: ModelConfig, x_BLD, positions_BL, *,
               num_layers: int, causal: bool, mask_BLS=None, encoded_BSD=None,
               cross_mask_BLS=None, deterministic: bool, decode: bool = False,
               ordered_positions: bool = False):
  """Positions, blocks and final norm, as submodules of `module`.

  Called from a compact method, so every family names its parameters the same
  way: position_embed, embed_norm, relative_bias, block_{i} (or blocks, with
  a leading layer axis, when scanned), final_norm.
  """
  dtype, param_dtype = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
  if c.scale_embeddings:
    x_BLD = x_BLD * jnp.sqrt(jnp.asarray(c.d_model, dtype))
  if c.position == 'learned':
    x_BLD += layers.Embed(c.max_len, c.d_model, c.init_std / 2, dtype,
                          param_dtype, axes=('position', 'embed'),
                          name='position_embed')(positions_BL)
  elif c.position == 'sinusoidal':
    x_BLD += layers.sinusoidal_positions(positions_BL, c.d_model, dtype)
  if c.embed_norm:
    x_BLD = layers.make_norm(c.norm, c.norm_eps, dtype, param_dtype,
                             'embed_norm')(x_BLD)
  # A zero the tests differentiate against to check what sees what.
  x_BLD = module.perturb('embedded', x_BLD)
  x_BLD = nn.Dropout(c.dropout_rate)(x_BLD, deterministic=deterministic)
  score_bias = None
  if c.position == 'relative':
    # One table for the stack; each attention calls it with its own key
    # positions (the cache's when decoding).
    score_bias = layers.RelativePositionBias(
        c.num_heads, bidirectional=not causal,
        num_buckets=c.relative_buckets,
        max_distance=c.relative_max_distance, init_std=c.init_std,
        dtype=dtype, param_dtype=param_dtype, name='relative_bias')
  block_args = (positions_BL, mask_BLS, encoded_BSD, cross_mask_BLS)
  flags = dict(causal=causal, cross_attention=encoded_BSD is not None,
               deterministic=deterministic, decode=decode,
               ordered_positions=ordered_positions)
  block = TransformerBlock
  if c.remat != 'none':
    block = nn.remat(block, policy=_REMAT_POLICIES[c.remat])
  if c.scan_layers:
    # One block traced and compiled once; params[blocks] stacks the layers.
    x_BLD, _ = nn.scan(
        block, variable_axes={'params': 0, 'cache': 0, 'aux': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast,) * len(block_args), length=num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'})(
            c, moe=c.num_experts > 0, scanned=True, name='blocks', **flags)(
                x_BLD, *block_args)
  elif c.share_layers:
    # Block g serves layers g*R ... (g+1)*R - 1: a scan whose params are
    # broadcast (one set) while each layer keeps its own KV cache.
    repeats = num_layers // c.share_layers
    for g in range(c.share_layers):
      x_BLD, _ = nn.scan(
          block, variable_broadcast='params',
          variable_axes={'cache': 0, 'aux': 0},
          split_rngs={'params': False, 'dropout': True},
          in_axes=(nn.broadcast,) * len(block_args), length=repeats)(
              c, scanned=True, name=f'block_{g}', **flags)(x_BLD, *block_args)
  else:
    for i in range(num_layers):
      x_BLD = block(c, moe=c.num_experts > 0 and (i + 1) % c.moe_every == 0,
                    name=f'block_{i}', **flags)(x_BLD, *block_args,
                                                score_bias)
  if c.norm_position == 'pre':
    x_BLD = layers.make_norm(c.norm, c.norm_eps, dtype, param_dtype,
                             'final_norm')(x_BLD)
  return x_BLD


def _default_positions(tokens_BL):
  return jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)


def _padding_mask(valid_BS, query_len: int):
  """[B, L, S] attention mask from a [B, S] validity mask (None passes)."""
  if valid_BS is None:
    return None
  return jnp.broadcast_to(valid_BS[:, None, :].astype(bool),
                          (valid_BS.shape[0], query_len, valid_BS.shape[1]))


def classification_logits(c: ModelConfig, x_BLD, padding_mask_BL,
                          deterministic: bool, first=None):
  """Class logits from one vector per sequence (see ModelConfig.pooling)."""
  if padding_mask_BL is None:
    padding_mask_BL = jnp.ones(x_BLD.shape[:2], bool)
  weights_BL1 = padding_mask_BL[..., None].astype(x_BLD.dtype)
  if c.pooling == 'first':
    pooled_BD = x_BLD[:, 0] if first is None else first
  elif c.pooling == 'mean':
    pooled_BD = (x_BLD * weights_BL1).sum(1) / jnp.maximum(
        weights_BL1.sum(1), 1.0)
  else:
    last_B = jnp.maximum(padding_mask_BL.sum(1).astype(jnp.int32) - 1, 0)
    pooled_BD = jnp.take_along_axis(x_BLD, last_B[:, None, None], 1)[:, 0]
  pooled_BD = nn.Dropout(c.dropout_rate)(pooled_BD,
                                         deterministic=deterministic)
  return layers.Dense(
      c.num_classes, ('embed', 'classes'), init_std=c.init_std,
      dtype=_DTYPES[c.dtype], param_dtype=_DTYPES[c.param_dtype],
      quant=c.quantization, name='classifier')(pooled_BD).astype(jnp.float32)


def _output_logits(c: ModelConfig, x_BLD, embed: layers.Embed, bias=None,
                   decoding_step: bool = False):
  """Tied (the embedding table) or untied ('head') output projection."""
  dtype, param_dtype = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
  if c.tie_embeddings:
    if c.rescale_tied_head:  # T5: the tied table expects d_model**-0.5.
      x_BLD = x_BLD * c.d_model ** -0.5
    logits_BLV = embed.attend(x_BLD, decoding_step=decoding_step)
  else:
    logits_BLV = layers.Dense(
        c.vocab_size, ('embed', 'vocab'), use_bias=False, init_std=c.init_std,
        dtype=dtype, param_dtype=param_dtype, quant=c.vocab_quantization,
        name='head')(x_BLD)
  if bias is not None:
    logits_BLV += bias
  return nn.with_logical_constraint(logits_BLV.astype(jnp.float32),
                                    ('batch', 'length', 'vocab'))


class DecoderOnly(nn.Module):
  """GPT-2 / Llama-style causal language model: tokens -> next-token logits."""

  config: ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {
      'inputs': 'tokens_BL', 'padding_mask': 'padding_mask_BL'}

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, padding_mask_BL=None, *,
               deterministic: bool = True, decode: bool = False,
               logits_at_B=None):
    """Next-token logits, or class logits when `num_classes` is set.

    Padding goes on the right; causal attention keeps real tokens from
    seeing it, and `padding_mask_BL` (True at real tokens) finds the last one.
    `logits_at_B` gives one index per row: the logits are then those of that
    position alone, [B, 1, V] (a prefill needs each prompt's last token's,
    and the output layer is a quarter of its work at bench-gpt).
    """
    c = self.config
    ordered_positions = positions_BL is None
    if ordered_positions:
      positions_BL = _default_positions(tokens_BL)
    embed = layers.Embed(c.vocab_size, c.d_model, c.init_std,
                         _DTYPES[c.dtype], _DTYPES[c.param_dtype],
                         quant=c.vocab_quantization, factor_dim=c.embed_dim,
                         name='embed')
    x_BLD = _run_stack(self, c, embed(tokens_BL), positions_BL,
                       num_layers=c.num_layers, causal=True,
                       deterministic=deterministic, decode=decode,
                       ordered_positions=ordered_positions)
    if c.num_classes:
      return classification_logits(c, x_BLD, padding_mask_BL, deterministic)
    if logits_at_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_at_B[:, None, None], axis=1)
    # Decoding steps lay the output layer out for a loop that reuses its table
    # (lm/matmul.py); a prefill projects once, and bench-gpt's was faster
    # without that copy: 30.71 -> 30.06 ms (medians of 60 alternating calls).
    return _output_logits(c, x_BLD, embed,
                          decoding_step=decode and logits_at_B is None)


class EncoderOnly(nn.Module):
  """BERT: bidirectional encoder, masked-LM head and [CLS] pooler.

  Returns class logits when `num_classes` is set, else masked-LM logits
  (hidden states when `mlm_head` is off); with `all_outputs=True`, a dict of
  'hidden', 'pooled' (with `pooler`), 'logits' (with `mlm_head`) and
  'class_logits' (with `num_classes`). `padding_mask_BL` is True at real
  tokens.
  """

  config: ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {
      'inputs': 'tokens_BL', 'token_types': 'token_types_BL',
      'padding_mask': 'padding_mask_BL'}

  @nn.compact
  def __call__(self, tokens_BL, token_types_BL=None, padding_mask_BL=None, *,
               deterministic: bool = True, all_outputs: bool = False):
    c = self.config
    dtype, param_dtype = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    embed = layers.Embed(c.vocab_size, c.d_model, c.init_std, dtype,
                         param_dtype, quant=c.vocab_quantization,
                         factor_dim=c.embed_dim, name='embed')
    x_BLD = embed(tokens_BL)
    if c.type_vocab_size:
      if token_types_BL is None:
        token_types_BL = jnp.zeros_like(tokens_BL)
      x_BLD += layers.Embed(c.type_vocab_size, c.d_model, c.init_std, dtype,
                            param_dtype, axes=('token_types', 'embed'),
                            name='token_type_embed')(token_types_BL)
    x_BLD = _run_stack(
        self, c, x_BLD, _default_positions(tokens_BL),
        num_layers=c.num_layers, causal=False,
        mask_BLS=_padding_mask(padding_mask_BL, tokens_BL.shape[1]),
        deterministic=deterministic)
    outputs = {'hidden': x_BLD}
    if c.pooler:
      outputs['pooled'] = jnp.tanh(layers.Dense(
          c.d_model, ('embed', 'mlp'), init_std=c.init_std, dtype=dtype,
          param_dtype=param_dtype, quant=c.quantization, name='pooler')(
              x_BLD[:, 0]))
    if c.mlm_head:
      h_BLD = layers.Dense(
          c.d_model, ('embed', 'mlp'), init_std=c.init_std, dtype=dtype,
          param_dtype=param_dtype, quant=c.quantization, name='mlm_dense')(
              x_BLD)
      h_BLD = layers.make_norm(c.norm, c.norm_eps, dtype, param_dtype,
                               'mlm_norm')(layers.ACTIVATIONS[c.activation](
                                   h_BLD))
      bias_V = self.param('mlm_bias', layers.logical(nn.initializers.zeros,
                                                     ('vocab',)),
                          (c.vocab_size,), param_dtype)
      outputs['logits'] = _output_logits(c, h_BLD, embed, bias_V)
    if c.num_classes:
      outputs['class_logits'] = classification_logits(
          c, x_BLD, padding_mask_BL, deterministic,
          first=outputs.get('pooled'))
    if all_outputs:
      return outputs
    if c.num_classes:
      return outputs['class_logits']
    return outputs['logits'] if c.mlm_head else outputs['hidden']


class Stack(nn.Module):
  """The encoder or the decoder half of an encoder-decoder model."""

  config: ModelConfig
  num_layers: int
  causal: bool

  @nn.compact
  def __call__(self, x_BLD, positions_BL, *, mask_BLS=None, encoded_BSD=None,
               cross_mask_BLS=None, deterministic: bool, decode: bool = False,
               ordered_positions: bool = False):
    return _run_stack(self, self.config, x_BLD, positions_BL,
                      num_layers=self.num_layers, causal=self.causal,
                      mask_BLS=mask_BLS, encoded_BSD=encoded_BSD,
                      cross_mask_BLS=cross_mask_BLS,
                      deterministic=deterministic, decode=decode,
                      ordered_positions=ordered_positions)


class EncoderDecoder(nn.Module):
  """The original Transformer and T5: source tokens -> target-token logits.

  One embedding table serves the encoder, the decoder and (when tied) the
  output layer. `encoder_mask_BS` is True at real source tokens.
  """

  config: ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {
      'encoder_inputs': 'encoder_tokens_BS', 'inputs': 'tokens_BL',
      'encoder_mask': 'encoder_mask_BS'}

  def setup(self):
    c = self.config
    self.embed = layers.Embed(c.vocab_size, c.d_model, c.init_std,
                              _DTYPES[c.dtype], _DTYPES[c.param_dtype],
                              quant=c.vocab_quantization,
                              factor_dim=c.embed_dim)
    self.encoder = Stack(c, c.num_layers, causal=False)
    self.decoder = Stack(c, c.decoder_layers, causal=True)

  def encode(self, tokens_BS, encoder_mask_BS=None, *,
             deterministic: bool = True):
    return self.encoder(
        self.embed(tokens_BS), _default_positions(tokens_BS),
        mask_BLS=_padding_mask(encoder_mask_BS, tokens_BS.shape[1]),
        deterministic=deterministic)

  @nn.compact  # The untied 'head' is created here.
  def decode_logits(self, encoded_BSD, tokens_BL, positions_BL=None,
                    encoder_mask_BS=None, *, deterministic: bool = True,
                    decode: bool = False):
    ordered_positions = positions_BL is None
    if ordered_positions:
      positions_BL = _default_positions(tokens_BL)
    x_BLD = self.decoder(
        self.embed(tokens_BL), positions_BL, encoded_BSD=encoded_BSD,
        cross_mask_BLS=_padding_mask(encoder_mask_BS, tokens_BL.shape[1]),
        deterministic=deterministic, decode=decode,
        ordered_positions=ordered_positions)
    return _output_logits(self.config, x_BLD, self.embed,
                          decoding_step=decode)

  def __call__(self, encoder_tokens_BS, tokens_BL, encoder_mask_BS=None, *,
               deterministic: bool = True):
    encoded_BSD = self.encode(encoder_tokens_BS, encoder_mask_BS,
                              deterministic=deterministic)
    return self.decode_logits(encoded_BSD, tokens_BL,
                              encoder_mask_BS=encoder_mask_BS,
                              deterministic=deterministic)


_FAMILIES = {'decoder': DecoderOnly, 'encoder': EncoderOnly,
             'encoder_decoder': EncoderDecoder}


def build_model(config: ModelConfig) -> nn.Module:
  if config.family == 'lstm':
    from lm.baselines import lstm  # pylint: disable=g-import-not-at-top
    return lstm.LstmClassifier(config)  # (imported here: it imports models)
  if config.family not in _FAMILIES:
    raise UsageError(f'model.family={config.family!r} is not one of '
                     f'{sorted(_FAMILIES)}')
  return _FAMILIES[config.family](config)


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
