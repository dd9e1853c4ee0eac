"""The decoder-only family: GPT-2 and Llama-style causal language models.

Tokens -> next-token logits (or class logits from the last real token when
model.num_classes is set). Trains with the causal objective, instruction
tuning and classification; reads and writes GPT-2 and Llama checkpoints.
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from lm.errors import UsageError
from lm.model import blocks
from lm.model import layers
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.model.hf import gpt2
from lm.model.hf import llama


class DecoderOnly(nn.Module):
  """A causal Transformer: tokens -> next-token logits."""

  config: ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {
      'inputs': 'tokens_BL', 'padding_mask': 'padding_mask_BL'}

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, padding_mask_BL=None, *,
               deterministic: bool = True, decode: bool = False,
               logits_at_B=None):
    """Next-token logits, or class logits when `num_classes` is set.

    `positions_BL` None means 0, 1, 2, ... in every row. Padding goes on the
    right; causal attention keeps real tokens from seeing it, and
    `padding_mask_BL` (True at real tokens) finds the last one.
    `logits_at_B` gives one index per row: the logits are then those of that
    position alone, [B, 1, V] (a prefill needs each prompt's last token's).
    """
    config = self.config
    embed = layers.Embed(config.vocab_size, config.d_model, config.init_std,
                         config.compute_dtype, config.weights_dtype,
                         quant=config.vocab_quantization,
                         factor_dim=config.embed_dim, name=model_params.EMBED)
    x_BLD = blocks.run_stack(self, config, embed(tokens_BL), positions_BL,
                             num_layers=config.num_layers, causal=True,
                             deterministic=deterministic, decode=decode)
    if config.num_classes:
      return blocks.classification_logits(config, x_BLD, padding_mask_BL,
                                          deterministic)
    if logits_at_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_at_B[:, None, None], axis=1)
    return blocks.output_logits(config, x_BLD, embed)


def _check(config: ModelConfig) -> None:
  if config.num_classes and config.pooling == 'first':
    raise UsageError("model.pooling='first' sees one token in a causal "
                     "decoder; use 'last' or 'mean'")


FAMILY = registry.register(registry.Family(
    name='decoder', module=DecoderOnly,
    objectives=('causal', 'instruct', 'classify'),
    attention_layers=lambda config: config.num_layers, generates=True,
    check=_check, hf_layouts={'gpt2': gpt2.LAYOUT, 'llama': llama.LAYOUT}))
