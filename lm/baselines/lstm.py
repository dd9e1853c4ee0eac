"""An LSTM text classifier (Hochreiter & Schmidhuber, 1997), the baseline the
Transformer classifiers are measured against.

Token embeddings (width d_model) feed `num_layers` bidirectional LSTM
layers (d_model units each way) built from Flax's `nn.RNN`; each direction
stops at the sequence's last real token (`seq_lengths`), so right padding
changes nothing. The outputs are pooled (model.pooling: mean over real
tokens, or first/last) into the same classifier head the Transformers use.
Select it with model.family='lstm' and model.num_classes > 0; it trains and
evaluates through the same Trainer and experiments/evaluate.py.
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from lm import layers
from lm import models


class LstmClassifier(nn.Module):
  config: models.ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {
      'inputs': 'tokens_BL', 'padding_mask': 'padding_mask_BL'}

  @nn.compact
  def __call__(self, tokens_BL, padding_mask_BL=None, *,
               deterministic: bool = True):
    c = self.config
    if padding_mask_BL is None:
      padding_mask_BL = jnp.ones(tokens_BL.shape, bool)
    lengths_B = padding_mask_BL.sum(axis=1).astype(jnp.int32)
    x_BLD = layers.Embed(c.vocab_size, c.d_model, c.init_std,
                         name='embed')(tokens_BL)
    x_BLD = nn.Dropout(c.dropout_rate)(x_BLD, deterministic=deterministic)
    for i in range(c.num_layers):
      x_BLD = nn.Bidirectional(
          nn.RNN(nn.OptimizedLSTMCell(c.d_model), name=f'forward_{i}'),
          nn.RNN(nn.OptimizedLSTMCell(c.d_model), name=f'backward_{i}'),
          name=f'lstm_{i}')(x_BLD, seq_lengths=lengths_B)
      x_BLD = nn.Dropout(c.dropout_rate)(x_BLD, deterministic=deterministic)
    return models.classification_logits(c, x_BLD, padding_mask_BL,
                                         deterministic)
