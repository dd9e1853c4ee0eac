"""T5 (Raffel et al., 2020) architectures: small and base (T5 v1.0).

  python -m experiments.train --config=configs/t5.py:small --workdir=DIR

Encoder-decoder with pre-norm RMSNorm (eps 1e-6), no biases, ReLU MLP,
relative position buckets (32 buckets, max distance 128; one table per
stack), unscaled dot-product attention, one embedding table shared by the
encoder, the decoder and the output layer (rescaled by d_model**-0.5).
T5-small has 60,506,624 parameters, the count of transformers'
T5ForConditionalGeneration, as tests/configs_test.py checks. Span-corruption
pretraining at this size needs an accelerator; configs/t5_shakespeare.py is
the CPU-sized run.
"""

from configs import base

# name: (num_layers, d_model, num_heads, d_ff)
SIZES = {'small': (6, 512, 8, 2048), 'base': (12, 768, 12, 3072)}


def get_config(arg='small'):
  num_layers, d_model, num_heads, d_ff = SIZES[arg or 'small']
  config = base.get_base_config()
  config.model.update(
      family='encoder_decoder', vocab_size=32128, max_len=512,
      d_model=d_model,
      num_layers=num_layers, num_heads=num_heads, head_dim=64, d_ff=d_ff,
      activation='relu', gated_mlp=False, norm='rmsnorm', norm_position='pre',
      norm_eps=1e-6, position='relative', relative_buckets=32,
      relative_max_distance=128, scale_queries=False, tie_embeddings=True,
      rescale_tied_head=True, use_bias=False, dropout_rate=0.1)
  config.data.update(objective='span', vocab_size=8192, seq_len=512,
                     batch_size=8)
  config.optim.update(learning_rate=1e-3, warmup_steps=200)
  return config
