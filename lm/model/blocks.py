"""What every Transformer family is made of: the block, the stack of blocks
with its positions and final norm, and the output heads.

A block is self-attention (causal or not), optional cross-attention and a
feed-forward (a mixture of experts when `moe`), each with a residual and a
norm. `run_stack` names parameters the same way for every family, and the
heads project onto the vocabulary (tied or untied) or onto classes.
"""

import flax.linen as nn
import jax.numpy as jnp

from lm.model import layers
from lm.model import moe
from lm.model import params as model_params
from lm.model import positions
from lm.model.attention import Attention
from lm.model.config import ModelConfig
from lm.model.config import REMAT_POLICIES


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

  @nn.compact
  def __call__(self, x_BLD, positions_BL=None, key_mask_BS=None,
               encoded_BSD=None, cross_key_mask_BS=None, score_bias=None):
    config = self.config
    deterministic = self.deterministic
    dtype, param_dtype = config.compute_dtype, config.weights_dtype
    # GPT-2 scales the residual projections by 1/sqrt(2 * num_layers).
    out_std = config.init_std / (2 * config.num_layers) ** 0.5

    def attention(name, rotary, causal):
      return Attention(
          num_heads=config.num_heads, num_kv_heads=config.kv_heads,
          head_dim=config.head_width, causal=causal,
          rotary_theta=config.rotary_theta if rotary else None,
          scale_queries=config.scale_queries, use_bias=config.use_bias,
          init_std=config.init_std, out_init_std=out_std, dtype=dtype,
          param_dtype=param_dtype, quant=config.quantization,
          kv_cache_int8=config.kv_cache == 'int8', lora=config.lora,
          kernel=config.attention, block=config.attention_block, name=name)

    def norm(name):
      return layers.make_norm(config.norm, config.norm_eps, dtype,
                              param_dtype, name)

    def residual(x_BLD, sublayer, norm_name):
      dropout = nn.Dropout(config.dropout_rate)
      if config.norm_position == 'pre':
        return x_BLD + dropout(sublayer(norm(norm_name)(x_BLD)),
                               deterministic=deterministic)
      return norm(norm_name)(x_BLD + dropout(sublayer(x_BLD),
                                             deterministic=deterministic))

    self_attention = attention('attention', config.position == 'rotary',
                               self.causal)
    x_BLD = residual(x_BLD, lambda h: self_attention(
        h, positions_BL, key_mask_BS=key_mask_BS, score_bias=score_bias,
        decode=self.decode), 'attention_norm')
    if self.cross_attention:
      cross = attention('cross_attention', False, False)
      x_BLD = residual(x_BLD, lambda h: cross(
          h, positions_BL, kv_BSD=encoded_BSD, key_mask_BS=cross_key_mask_BS),
                       'cross_attention_norm')
    if self.moe:
      mlp = moe.MoeMlp(
          num_experts=config.num_experts,
          experts_per_token=config.experts_per_token,
          capacity_factor=config.expert_capacity_factor, d_ff=config.d_ff,
          activation=config.activation, gated=config.gated_mlp,
          init_std=config.init_std, out_init_std=out_std,
          aux_loss_weight=config.router_aux_loss,
          z_loss_weight=config.router_z_loss, dtype=dtype,
          param_dtype=param_dtype, name='moe')
    else:
      mlp = layers.Mlp(
          d_ff=config.d_ff, activation=config.activation,
          gated=config.gated_mlp, use_bias=config.use_bias,
          init_std=config.init_std, out_init_std=out_std,
          dtype=dtype, param_dtype=param_dtype, quant=config.quantization,
          lora=config.lora, name='mlp')
    x_BLD = residual(x_BLD, lambda h: mlp(h, deterministic), 'mlp_norm')
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    return (x_BLD, None) if self.scanned else x_BLD


def run_stack(module: nn.Module, config: ModelConfig, x_BLD,
              positions_BL=None, *, num_layers: int, causal: bool,
              key_mask_BS=None, encoded_BSD=None, cross_key_mask_BS=None,
              deterministic: bool, decode: bool = False):
  """Positions, blocks and final norm, as submodules of `module`.

  Called from a compact method, so every family names its parameters the same
  way: position_embed, embed_norm, relative_bias, block_{i} (or blocks, with
  a leading layer axis, when scanned), final_norm. `positions_BL` None means
  0, 1, 2, ... in every row; `key_mask_BS` (and `cross_key_mask_BS`, over
  `encoded_BSD`) is True at the keys attention may see.
  """
  dtype, param_dtype = config.compute_dtype, config.weights_dtype
  if config.scale_embeddings:
    x_BLD = x_BLD * jnp.sqrt(jnp.asarray(config.d_model, dtype))
  table_positions_BL = (default_positions(x_BLD) if positions_BL is None
                        else positions_BL)
  if config.position == 'learned':
    x_BLD += layers.Embed(config.max_len, config.d_model,
                          config.init_std / 2, dtype, param_dtype,
                          axes=('position', 'embed'),
                          name=model_params.POSITION_EMBED)(table_positions_BL)
  elif config.position == 'sinusoidal':
    x_BLD += positions.sinusoidal_positions(table_positions_BL,
                                            config.d_model, dtype)
  if config.embed_norm:
    x_BLD = layers.make_norm(config.norm, config.norm_eps, dtype, param_dtype,
                             model_params.EMBED_NORM)(x_BLD)
  # A zero the tests differentiate against to check what sees what.
  x_BLD = module.perturb('embedded', x_BLD)
  x_BLD = nn.Dropout(config.dropout_rate)(x_BLD, deterministic=deterministic)
  score_bias = None
  if config.position == 'relative':
    # One table for the stack; each attention calls it with its own key
    # positions (the cache's when decoding).
    score_bias = positions.RelativePositionBias(
        config.num_heads, bidirectional=not causal,
        num_buckets=config.relative_buckets,
        max_distance=config.relative_max_distance, init_std=config.init_std,
        dtype=dtype, param_dtype=param_dtype, name='relative_bias')
  block_args = (positions_BL, key_mask_BS, encoded_BSD, cross_key_mask_BS)
  flags = dict(causal=causal, cross_attention=encoded_BSD is not None,
               deterministic=deterministic, decode=decode)
  block = TransformerBlock
  if config.remat != 'none':
    block = nn.remat(block, policy=REMAT_POLICIES[config.remat])
  if config.scan_layers:
    # One block traced and compiled once; params[blocks] stacks the layers.
    x_BLD, _ = nn.scan(
        block, variable_axes={'params': 0, 'cache': 0, 'aux': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast,) * len(block_args), length=num_layers,
        metadata_params={nn.PARTITION_NAME: model_params.LAYERS_AXIS})(
            config, moe=config.num_experts > 0, scanned=True,
            name=model_params.STACK, **flags)(x_BLD, *block_args)
  elif config.share_layers:
    # Block g serves layers g*R ... (g+1)*R - 1: a scan whose params are
    # broadcast (one set) while each layer keeps its own KV cache.
    repeats = num_layers // config.share_layers
    for g in range(config.share_layers):
      x_BLD, _ = nn.scan(
          block, variable_broadcast='params',
          variable_axes={'cache': 0, 'aux': 0},
          split_rngs={'params': False, 'dropout': True},
          in_axes=(nn.broadcast,) * len(block_args), length=repeats)(
              config, scanned=True, name=model_params.BLOCK.format(g),
              **flags)(x_BLD, *block_args)
  else:
    for i in range(num_layers):
      experts = config.num_experts > 0 and (i + 1) % config.moe_every == 0
      x_BLD = block(config, moe=experts, name=model_params.BLOCK.format(i),
                    **flags)(x_BLD, *block_args, score_bias)
  if config.norm_position == 'pre':
    x_BLD = layers.make_norm(config.norm, config.norm_eps, dtype, param_dtype,
                             'final_norm')(x_BLD)
  return x_BLD


def default_positions(x_BL):
  """0, 1, 2, ... in every row of `x_BL` (tokens, or [B, L, D] vectors)."""
  return jnp.broadcast_to(jnp.arange(x_BL.shape[1]), x_BL.shape[:2])


def classification_logits(config: ModelConfig, x_BLD, padding_mask_BL,
                          deterministic: bool, first=None):
  """Class logits from one vector per sequence (see ModelConfig.pooling)."""
  if padding_mask_BL is None:
    padding_mask_BL = jnp.ones(x_BLD.shape[:2], bool)
  weights_BL1 = padding_mask_BL[..., None].astype(x_BLD.dtype)
  if config.pooling == 'first':
    pooled_BD = x_BLD[:, 0] if first is None else first
  elif config.pooling == 'mean':
    pooled_BD = (x_BLD * weights_BL1).sum(1) / jnp.maximum(
        weights_BL1.sum(1), 1.0)
  else:
    last_B = jnp.maximum(padding_mask_BL.sum(1).astype(jnp.int32) - 1, 0)
    pooled_BD = jnp.take_along_axis(x_BLD, last_B[:, None, None], 1)[:, 0]
  pooled_BD = nn.Dropout(config.dropout_rate)(pooled_BD,
                                              deterministic=deterministic)
  return layers.Dense(
      config.num_classes, ('embed', 'classes'), init_std=config.init_std,
      dtype=config.compute_dtype, param_dtype=config.weights_dtype,
      quant=config.quantization, out_dtype=jnp.float32,
      name='classifier')(pooled_BD)


def output_logits(config: ModelConfig, x_BLD, embed: layers.Embed, bias=None):
  """Tied (the embedding table) or untied ('head') output projection, in
  float32 whatever the compute dtype (the softmax and loss read them)."""
  dtype, param_dtype = config.compute_dtype, config.weights_dtype
  if config.tie_embeddings:
    if config.rescale_tied_head:  # T5: the tied table expects d_model**-0.5.
      x_BLD = x_BLD * config.d_model ** -0.5
    logits_BLV = embed.attend(x_BLD)
  else:
    logits_BLV = layers.Dense(
        config.vocab_size, ('embed', 'vocab'), use_bias=False,
        init_std=config.init_std, dtype=dtype, param_dtype=param_dtype,
        quant=config.vocab_quantization, out_dtype=jnp.float32,
        name='head')(x_BLD)
  if bias is not None:
    logits_BLV += bias.astype(jnp.float32)
  return nn.with_logical_constraint(logits_BLV, ('batch', 'length', 'vocab'))
