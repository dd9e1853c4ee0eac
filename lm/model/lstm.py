"""An LSTM text classifier (Hochreiter & Schmidhuber, 1997), the baseline the
Transformer classifiers are measured against.

Token embeddings (width d_model) feed `num_layers` LSTM layers (d_model
units each way) built from Flax's `nn.RNN`, bidirectional unless
model.bidirectional is False; each direction stops at the sequence's last
real token (`seq_lengths`), so right padding changes nothing. The outputs
are pooled (model.pooling: mean over real tokens, or first/last) into the
same classifier head the Transformers use. Forward only with
pooling='last' is the textbook classifier: the last hidden state.
Select it with model.family='lstm' and model.num_classes > 0; it trains and
evaluates through the same Trainer and experiments/evaluate.py.
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


class LstmClassifier(nn.Module):
  """Tokens -> class logits through bidirectional LSTM layers."""

  config: ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {
      'inputs': 'tokens_BL', 'padding_mask': 'padding_mask_BL'}

  @nn.compact
  def __call__(self, tokens_BL, padding_mask_BL=None, *,
               deterministic: bool = True):
    config = self.config
    if padding_mask_BL is None:
      padding_mask_BL = jnp.ones(tokens_BL.shape, bool)
    lengths_B = padding_mask_BL.sum(axis=1).astype(jnp.int32)
    x_BLD = layers.Embed(config.vocab_size, config.d_model,
                         config.init_std, name=model_params.EMBED)(tokens_BL)
    x_BLD = nn.Dropout(config.dropout_rate)(x_BLD, deterministic=deterministic)
    for i in range(config.num_layers):
      if config.bidirectional:
        x_BLD = nn.Bidirectional(
            nn.RNN(nn.OptimizedLSTMCell(config.d_model), name=f'forward_{i}'),
            nn.RNN(nn.OptimizedLSTMCell(config.d_model),
                   name=f'backward_{i}'),
            name=f'lstm_{i}')(x_BLD, seq_lengths=lengths_B)
      else:
        cell = nn.OptimizedLSTMCell(config.d_model, name=f'forward_{i}')
        x_BLD = nn.RNN(cell)(x_BLD, seq_lengths=lengths_B)
      x_BLD = nn.Dropout(config.dropout_rate)(x_BLD,
                                              deterministic=deterministic)
    return blocks.classification_logits(config, x_BLD, padding_mask_BL,
                                        deterministic)


def _check(config: ModelConfig) -> None:
  if not config.num_classes:
    raise UsageError("model.family='lstm' is a classifier; set "
                     'model.num_classes')


FAMILY = registry.register(registry.Family(
    name='lstm', module=LstmClassifier, objectives=('classify',),
    attention_layers=lambda config: 0, compressible=False, check=_check))
