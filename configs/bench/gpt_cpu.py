"""bench-gpt: the model benchmarks/benchmark.py measures on a CPU.

  python -m benchmarks.benchmark --config=configs/bench/gpt_cpu.py

GPT-2-style pre-LN decoder: 6 layers, width 384, 6 heads, GELU MLP of 1536,
vocabulary 8192, learned positions, tied output layer (13.9M parameters);
float32, AdamW, batches of 8 x 256 tokens. Generation: 8 prompts of 64
tokens, 128 new tokens each, greedy. benchmarks/torch_peer.py builds the
same model in PyTorch.
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.update(
      vocab_size=8192, d_model=384, num_layers=6, num_heads=6, d_ff=1536,
      activation='gelu', norm='layernorm', norm_position='pre',
      position='learned', max_len=256, tie_embeddings=True)
  config.data.update(vocab_size=8192, seq_len=256, batch_size=8)
  config.optim.update(name='adamw', warmup_steps=10)
  config.bench.update(steps=10, warmup_steps=2, decode_batch=8,
                      prompt_len=64, new_tokens=128)
  return config
