"""The `model` section of a config, typed: the only source of model defaults.

`ModelConfig` is the validated, hashable form of a config's `model` section
(configs/base.py builds its defaults from this class); `from_config` parses
one, refusing unknown keys. The families that build modules from it are
registered in lm/model/registry.py.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from lm import sections
from lm.errors import UsageError
from lm.kernels import attention as attention_kernels
from lm.model import layers
from lm.model import quantized
from lm.model import registry

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
          'float16': jnp.float16}
# The values each of these keys takes (validate() checks them; the family
# is checked against the registry).
CHOICES = {
    'norm': ('layernorm', 'rmsnorm'),
    'norm_position': ('pre', 'post'),
    'activation': tuple(layers.ACTIVATIONS),
    'position': ('learned', 'sinusoidal', 'rotary', 'relative', 'none'),
    'pooling': ('first', 'mean', 'last'),
    'dtype': tuple(DTYPES),
    'param_dtype': tuple(DTYPES),
    'remat': ('none', 'full', 'dots'),
    'quant': ('none', 'int8', 'int4'),
    'kv_cache': ('float', 'int8'),
    'attention': attention_kernels.KINDS,
}
# What a rematerialized block keeps from the forward pass for the backward:
# nothing ('full': it is recomputed), or the matmul results ('dots').
REMAT_POLICIES = {'full': None,
                  'dots': jax.checkpoint_policies.checkpoint_dots}

# The layers LoRA adapters can wrap: attention and MLP projections.
LORA_LAYERS = ('query', 'key', 'value', 'out', 'wi', 'wi_0', 'wi_1', 'wo')

# Keys that change how a model is computed, not its parameters: a workdir
# resumes, and a checkpoint loads, under other values.
COMPUTE_KEYS = ('remat', 'attention', 'attention_block')
# Keys fine-tuning from another workdir may change: heads, regularization
# and computation.
HEAD_KEYS = ('num_classes', 'pooling', 'pooler', 'mlm_head', 'dropout_rate',
             'dtype', 'lora_rank', 'lora_alpha', 'lora_targets') + COMPUTE_KEYS


@dataclasses.dataclass(frozen=True)
class ModelConfig(sections.Section):
  """Architecture hyperparameters; `num_kv_heads` < `num_heads` gives GQA/MQA.

  family: a registered family (lm/model/registry.py): 'decoder' (GPT-2,
  Llama), 'encoder' (BERT), 'encoder_decoder' (the original Transformer,
  T5) or 'lstm', the baseline text classifier of lm/model/lstm.py
  (vocab_size, d_model, num_layers, num_classes, pooling, bidirectional,
  dropout_rate).
  Keys that only some families use say so.
  """

  NAME = 'model'
  family: str = 'decoder'  # GPT, Llama; 'encoder': BERT; 'encoder_decoder': T5
  vocab_size: int = 2048  # token embeddings (and output classes of an LM)
  d_model: int = 256  # the residual stream's width
  num_layers: int = 4  # the encoder's, for encoder_decoder
  num_decoder_layers: int = 0  # encoder_decoder; 0 means num_layers
  num_heads: int = 4  # query heads
  num_kv_heads: int = 0  # 0 means num_heads (plain multi-head attention)
  head_dim: int = 0  # 0 means d_model // num_heads
  d_ff: int = 1024  # the MLP's hidden width
  activation: str = 'gelu'  # the MLP's
  gated_mlp: bool = False  # with activation='silu': SwiGLU (Llama)
  norm: str = 'layernorm'  # or 'rmsnorm' (Llama, T5)
  norm_position: str = 'pre'  # 'post': after the residual add (BERT)
  norm_eps: float = 1e-5  # the norm's epsilon
  position: str = 'learned'  # how tokens know their place
  max_len: int = 256  # the longest sequence, of any position kind
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
  bidirectional: bool = True  # lstm: a backward LSTM beside the forward one
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
  # Mixture of experts (lm/model/moe.py) in place of the MLP of every
  # `moe_every`-th block (0 experts: none).
  num_experts: int = 0
  experts_per_token: int = 2
  expert_capacity_factor: float = 1.25
  moe_every: int = 1
  router_aux_loss: float = 0.01
  router_z_loss: float = 0.001
  # Inference (lm/model/quantized.py): weight-only 'int8' (per channel) or
  # 'int4' (in groups of `quant_group` weights) dense kernels, with token
  # embeddings and output layer in int8, written by experiments/compress.py;
  # an 'int8' KV cache.
  quant: str = 'none'
  quant_group: int = 64
  kv_cache: str = 'float'
  # LoRA adapters (lm/model/layers.py Dense) on the attention and MLP layers
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
  # Which kernel computes attention (lm/kernels/attention.py): 'auto' (the
  # fastest that serves on the platform: cuDNN or Pallas flash attention on
  # a GPU, Pallas on a TPU, causal query blocks on a CPU), 'xla' (the [L, S]
  # scores in memory), 'cudnn', 'pallas', 'blockwise' (blocks of
  # attention_block queries and keys, memory linear in the length) or
  # 'query_blocks'. All give the same values; a kernel that cannot serve
  # the model says so and another runs.
  attention: str = 'auto'
  attention_block: int = 512

  @property
  def quantization(self) -> quantized.Quant:
    return quantized.Quant.named(self.quant, self.quant_group)

  @property
  def vocab_quantization(self) -> quantized.Quant:
    """The token embeddings' and output layer's: int8 under int4 too, as
    llama.cpp's 4-bit files keep them at 8 bits; at 4 bits they cost far
    more quality than the blocks (docs/compression.md)."""
    if self.quant == 'int4':
      return quantized.Quant.named('int8', self.quant_group)
    return self.quantization

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def weights_dtype(self):
    return DTYPES[self.param_dtype]

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
  def context_limit(self) -> int:
    """The longest sequence the model takes: learned tables end there, and
    every model is refused longer prompts than it was configured for (a
    rotary model's memory grows with them)."""
    return self.max_len

  def validate(self):
    """Raises UsageError naming the first key that is wrong, and the fix;
    the family's own rules (lm/model/registry.py) come last."""
    family = registry.get(self.family)
    for key, choices in CHOICES.items():
      if getattr(self, key) not in choices:
        raise UsageError(f'model.{key}={getattr(self, key)!r} is not one of '
                         f'{list(choices)}')
    self.require(('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff',
                  'max_len', 'attention_block'), 1)
    # Token ids and positions are int32.
    for key in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff',
                'max_len', 'head_dim', 'num_kv_heads', 'num_decoder_layers'):
      if getattr(self, key) >= 2**31:
        raise UsageError(f'model.{key}={getattr(self, key)} is beyond what '
                         'lm indexes (below 2**31); the config is damaged')
    for key in ('norm_eps', 'rotary_theta'):
      if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
        raise UsageError(f'model.{key} must be a finite number above 0, got '
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
    self.require(('num_decoder_layers', 'type_vocab_size', 'num_classes'), 0)
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
    if family.check is not None:
      family.check(self)
