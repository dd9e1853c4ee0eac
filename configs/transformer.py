"""The original Transformer (Vaswani et al., 2017): base and big.

  python -m experiments.train --config=configs/transformer.py:base --workdir=DIR

Encoder-decoder, post-LN, ReLU feed-forward, biases, fixed sinusoidal
positions added to embeddings scaled by sqrt(d_model), and one table of
37,000 shared BPE tokens for source, target and output. "base" has
63,082,496 trainable parameters, the count of transformers' MarianMTModel
built with the same settings (its sinusoidal table is not trained), as
tests/configs_test.py checks.
"""

from configs import base

# name: (num_layers, d_model, num_heads, d_ff)
SIZES = {'base': (6, 512, 8, 2048), 'big': (6, 1024, 16, 4096)}


def get_config(arg='base'):
  num_layers, d_model, num_heads, d_ff = SIZES[arg or 'base']
  config = base.get_base_config()
  config.model.update(
      family='encoder_decoder', vocab_size=37000, d_model=d_model,
      num_layers=num_layers, num_heads=num_heads, d_ff=d_ff,
      activation='relu', norm='layernorm', norm_position='post',
      position='sinusoidal', scale_embeddings=True, tie_embeddings=True,
      use_bias=True, dropout_rate=0.1, max_len=1024)
  config.data.update(objective='span', vocab_size=8192, seq_len=256,
                     batch_size=8)
  config.optim.update(learning_rate=7e-4, warmup_steps=4000, b2=0.98)
  return config
