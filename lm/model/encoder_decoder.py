"""The encoder-decoder family: the original Transformer and T5.

Source tokens -> target-token logits, through an encoder and a decoder that
cross-attends to it. Trains with span corruption and sequence-to-sequence
pairs; reads and writes T5 checkpoints. Beam search is
lm/infer/beam_search.py.
"""

from typing import ClassVar

import flax.linen as nn

from lm.errors import UsageError
from lm.model import blocks
from lm.model import layers
from lm.model import registry
from lm.model.config import ModelConfig
from lm.model.hf import t5


class Stack(nn.Module):
  """The encoder or the decoder half of an encoder-decoder model."""

  config: ModelConfig
  num_layers: int
  causal: bool

  @nn.compact
  def __call__(self, x_BLD, positions_BL=None, *, key_mask_BS=None,
               encoded_BSD=None, cross_key_mask_BS=None, deterministic: bool,
               decode: bool = False):
    return blocks.run_stack(
        self, self.config, x_BLD, positions_BL, num_layers=self.num_layers,
        causal=self.causal, key_mask_BS=key_mask_BS, encoded_BSD=encoded_BSD,
        cross_key_mask_BS=cross_key_mask_BS, deterministic=deterministic,
        decode=decode)


class EncoderDecoder(nn.Module):
  """Source tokens -> target-token logits.

  One embedding table serves the encoder, the decoder and (when tied) the
  output layer. `encoder_mask_BS` is True at real source tokens.
  """

  config: ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {
      'encoder_inputs': 'encoder_tokens_BS', 'inputs': 'tokens_BL',
      'encoder_mask': 'encoder_mask_BS'}

  def setup(self):
    config = self.config
    self.embed = layers.Embed(config.vocab_size, config.d_model,
                              config.init_std, config.compute_dtype,
                              config.weights_dtype,
                              quant=config.vocab_quantization,
                              factor_dim=config.embed_dim)
    self.encoder = Stack(config, config.num_layers, causal=False)
    self.decoder = Stack(config, config.decoder_layers, causal=True)

  def encode(self, tokens_BS, encoder_mask_BS=None, *,
             deterministic: bool = True):
    return self.encoder(self.embed(tokens_BS), key_mask_BS=encoder_mask_BS,
                        deterministic=deterministic)

  @nn.compact  # The untied 'head' is created here.
  def decode_logits(self, encoded_BSD, tokens_BL, positions_BL=None,
                    encoder_mask_BS=None, *, deterministic: bool = True,
                    decode: bool = False):
    x_BLD = self.decoder(
        self.embed(tokens_BL), positions_BL, encoded_BSD=encoded_BSD,
        cross_key_mask_BS=encoder_mask_BS, deterministic=deterministic,
        decode=decode)
    return blocks.output_logits(self.config, x_BLD, self.embed)

  def __call__(self, encoder_tokens_BS, tokens_BL, encoder_mask_BS=None, *,
               deterministic: bool = True):
    encoded_BSD = self.encode(encoder_tokens_BS, encoder_mask_BS,
                              deterministic=deterministic)
    return self.decode_logits(encoded_BSD, tokens_BL,
                              encoder_mask_BS=encoder_mask_BS,
                              deterministic=deterministic)


def _check(config: ModelConfig) -> None:
  if config.num_classes:
    raise UsageError('model.num_classes (a classification head) is for '
                     "'encoder' and 'decoder' models; fine-tune an "
                     'encoder_decoder model to write the label instead')


FAMILY = registry.register(registry.Family(
    name='encoder_decoder', module=EncoderDecoder,
    objectives=('span', 'seq2seq'),
    attention_layers=lambda config: config.num_layers + config.decoder_layers,
    check=_check, hf_layouts={'t5': t5.LAYOUT}))
