"""Llama-style architectures: llama2_7b and smollm2_135m.

  python -m experiments.train --config=configs/llama.py:smollm2_135m --workdir=DIR

RMSNorm, SwiGLU, rotary positions, no biases; SmolLM2 adds grouped-query
attention (3 key/value heads) and tied embeddings. Parameter counts equal
the published models (Llama 2 7B: 6,738,415,616; SmolLM2-135M:
134,515,008), as tests/configs_test.py checks.
"""

from configs import base

PRESETS = {
    'llama2_7b': dict(vocab_size=32000, d_model=4096, num_layers=32,
                      num_heads=32, num_kv_heads=0, d_ff=11008,
                      max_len=4096, tie_embeddings=False, norm_eps=1e-5,
                      rotary_theta=10_000.0),
    'smollm2_135m': dict(vocab_size=49152, d_model=576, num_layers=30,
                         num_heads=9, num_kv_heads=3, d_ff=1536,
                         max_len=8192, tie_embeddings=True, norm_eps=1e-5,
                         rotary_theta=100_000.0),
}


def get_config(arg='smollm2_135m'):
  config = base.get_base_config()
  config.model.update(
      activation='silu', gated_mlp=True, norm='rmsnorm', position='rotary',
      use_bias=False, **PRESETS[arg or 'smollm2_135m'])
  config.data.update(vocab_size=8192, seq_len=1024, batch_size=8)
  config.optim.update(learning_rate=3e-4, warmup_steps=200)
  return config
