"""The main job: a small GPT on Shakespeare, sized for a 2-core CPU.

  python -m experiments.train --config=configs/default.py --workdir=workdirs/default
  python -m experiments.train --config=configs/default.py:long --workdir=workdirs/long

A Llama-style decoder: 4 layers, width 128, 4 heads, SwiGLU MLP of 344,
RMSNorm, rotary positions, no biases, tied embeddings, 128-token context,
SentencePiece BPE of 2048 tokens trained on the train split. Muon for the
blocks' matrices (AdamW for the rest) at 1e-2, batch 16, 1200 steps (2.46M
tokens, about 1.5 epochs), one evaluation at the end. At this budget (about
7 minutes of this CPU) a small model on more tokens wins: width 128 takes
1.6x the tokens/s of width 192, Muon halves the tokens AdamW needs for a
loss, and the Llama blocks took validation from 1.90 to 1.82 bits per byte
against GPT-2's at the same cost (docs/results.md). Result on a 2-core CPU,
from a fresh clone with `make train`: val_bits_per_byte=1.8218 (val loss
3.3564 nats/token); 5 min 32 s by the log's timer (data, compilation,
training, evaluation, samples), 9 min 24 s with setup; a second `make
train` resumes at step 1200 and ends in 15 s.

`long` is the earlier main job's GPT-2-style model (width 192, GELU MLP of
768, LayerNorm, learned positions), batch 32, AdamW at 3e-3 for 2400 steps
(9.8M tokens, about 6 epochs): val_bits_per_byte=1.7654.

Both end below the Kneser-Ney 4-gram's 1.8846 on the same tokens
(experiments/ngram_baseline.py).
"""

from configs import base


def get_config(arg=None):
  preset = arg or 'default'
  if preset not in ('default', 'long'):
    raise ValueError(f"unknown preset {preset!r}; use 'long' or none")
  config = base.get_base_config()
  config.model.update(d_model=128, num_layers=4, num_heads=4, d_ff=344,
                      max_len=128, activation='silu', gated_mlp=True,
                      norm='rmsnorm', position='rotary', use_bias=False)
  config.data.update(seq_len=128, batch_size=16)
  config.optim.update(name='muon', learning_rate=1e-2, momentum=0.95,
                      warmup_steps=50, min_lr_ratio=0.0)
  config.train.update(num_steps=1200, log_every=100, eval_every=1200,
                      checkpoint_every=400)
  if preset == 'long':
    config.model.update(d_model=192, d_ff=768, activation='gelu',
                        gated_mlp=False, norm='layernorm', position='learned',
                        use_bias=True)
    config.data.batch_size = 32
    config.optim.update(name='adamw', learning_rate=3e-3, momentum=0.9,
                        warmup_steps=30, min_lr_ratio=0.1)
    config.train.update(num_steps=2400, log_every=50, eval_every=400,
                        checkpoint_every=400)
  return config
