"""The encoder-only family: BERT and its kind.

A bidirectional encoder with a masked-LM head, a [CLS] pooler and a
classification head, each optional. Trains with the masked objective and
classification; reads and writes BERT checkpoints.
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from lm.model import blocks
from lm.model import layers
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.model.hf import bert


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
    config = self.config
    dtype, param_dtype = config.compute_dtype, config.weights_dtype
    embed = layers.Embed(config.vocab_size, config.d_model, config.init_std,
                         dtype, param_dtype, quant=config.vocab_quantization,
                         factor_dim=config.embed_dim, name=model_params.EMBED)
    x_BLD = embed(tokens_BL)
    if config.type_vocab_size:
      if token_types_BL is None:
        token_types_BL = jnp.zeros_like(tokens_BL)
      x_BLD += layers.Embed(config.type_vocab_size, config.d_model,
                            config.init_std, dtype, param_dtype,
                            axes=('token_types', 'embed'),
                            name=model_params.TOKEN_TYPE_EMBED)(token_types_BL)
    x_BLD = blocks.run_stack(
        self, config, x_BLD, num_layers=config.num_layers, causal=False,
        key_mask_BS=padding_mask_BL, deterministic=deterministic)

    def dense(name):
      return layers.Dense(config.d_model, ('embed', 'mlp'),
                          init_std=config.init_std, dtype=dtype,
                          param_dtype=param_dtype, quant=config.quantization,
                          name=name)

    outputs = {'hidden': x_BLD}
    if config.pooler:
      outputs['pooled'] = jnp.tanh(dense('pooler')(x_BLD[:, 0]))
    if config.mlm_head:
      activation = layers.ACTIVATIONS[config.activation]
      h_BLD = layers.make_norm(config.norm, config.norm_eps, dtype,
                               param_dtype, 'mlm_norm')(
                                   activation(dense('mlm_dense')(x_BLD)))
      bias_V = self.param('mlm_bias', layers.logical(nn.initializers.zeros,
                                                     ('vocab',)),
                          (config.vocab_size,), param_dtype)
      outputs['logits'] = blocks.output_logits(config, h_BLD, embed, bias_V)
    if config.num_classes:
      outputs['class_logits'] = blocks.classification_logits(
          config, x_BLD, padding_mask_BL, deterministic,
          first=outputs.get('pooled'))
    if all_outputs:
      return outputs
    if config.num_classes:
      return outputs['class_logits']
    return outputs['logits'] if config.mlm_head else outputs['hidden']


FAMILY = registry.register(registry.Family(
    name='encoder', module=EncoderOnly, objectives=('masked', 'classify'),
    attention_layers=lambda config: config.num_layers,
    hf_layouts={'bert': bert.LAYOUT}))
