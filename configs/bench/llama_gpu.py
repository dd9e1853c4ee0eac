"""bench-llama: a 1B Llama-style model for one GPU.

  python -m benchmarks.benchmark --config=configs/bench/llama_gpu.py

RMSNorm, SwiGLU, rotary positions, no biases, grouped-query attention (16
heads, 8 key/value heads); 18 layers of width 2048 and MLP 5632, vocabulary
32000, untied output layer (0.98B parameters). bfloat16 compute with float32
parameters and AdamW state, layers scanned, matmul results kept for the
backward pass (remat 'dots'), batches of 8 x 2048 tokens. MFU is reported
against the device's datasheet bfloat16 peak.
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.update(
      vocab_size=32000, d_model=2048, num_layers=18, num_heads=16,
      num_kv_heads=8, d_ff=5632, activation='silu', gated_mlp=True,
      norm='rmsnorm', position='rotary', use_bias=False,
      tie_embeddings=False, max_len=2048, dtype='bfloat16',
      param_dtype='float32', scan_layers=True, remat='dots')
  config.data.update(vocab_size=32000, seq_len=2048, batch_size=8)
  config.optim.update(name='adamw', learning_rate=3e-4, warmup_steps=10)
  config.bench.update(steps=50, warmup_steps=3, decode_batch=8,
                      prompt_len=512, new_tokens=256)
  return config
