"""GPT-2 (Radford et al., 2019) architectures: small, medium, large, xl.

  python -m experiments.train --config=configs/gpt2.py:small --workdir=DIR

Pre-LN, LayerNorm, GELU, learned positions, tied embeddings, biases. The
parameter counts equal OpenAI's checkpoints (small: 124,439,808), as
tests/configs_test.py checks. Training them on Shakespeare needs an accelerator.
"""

from configs import base

# name: (num_layers, d_model, num_heads)
SIZES = {'small': (12, 768, 12), 'medium': (24, 1024, 16),
         'large': (36, 1280, 20), 'xl': (48, 1600, 25)}


def get_config(arg='small'):
  num_layers, d_model, num_heads = SIZES[arg or 'small']
  config = base.get_base_config()
  config.model.update(
      vocab_size=50257, d_model=d_model, num_layers=num_layers,
      num_heads=num_heads, d_ff=4 * d_model, activation='gelu',
      norm='layernorm', position='learned', max_len=1024, tie_embeddings=True,
      use_bias=True)
  config.data.update(vocab_size=8192, seq_len=1024, batch_size=8)
  config.optim.update(learning_rate=6e-4, warmup_steps=200)
  return config
