r"""Code summarization: a Python stdlib function -> its docstring's first line:
a T5-style encoder-decoder trained from scratch, or SmolLM2-135M-Instruct
fine-tuned (preset `smollm2`); scored by ROUGE.

  python -m experiments.train --config=configs/summarization.py \
      --workdir=workdirs/summarization --evaluate=test

T5 layout (pre-RMSNorm, relative position buckets, ReLU MLP, no biases,
tied rescaled head) at CPU size: 3 + 3 layers, width 256, 4 heads, MLP of
1024; one SentencePiece BPE of 8000 tokens trained on code and summaries;
functions cut to their first 128 tokens (the signature and the start of
the body), summaries to 32; 400 steps of 32. Evaluation decodes the test
split with beam search (beam 4). On a 2-core CPU this budget is too small:
validation loss 6.21 nats/token, test ROUGE-L 3.95 with beam 4 and 3.46
greedy (README.md).

Preset `smollm2` asks the imported SmolLM2-135M-Instruct for a one-line
summary of each function in its chat format (a long function loses its
end, never the request) and trains LoRA adapters of rank 16 on every
projection, loss on the summary only: 120 steps of 8, rate 1e-3 (20 min
on a 2-core CPU). Greedy, on the 746 test functions, ROUGE-1 / 2 / L:
zero-shot (`experiments.evaluate --workdir=workdirs/smollm2
--task=configs/summarization.py:smollm2 --split=test`) 15.48 / 1.94 /
13.95, a paragraph about the function or its code back; fine-tuned
31.77 / 10.48 / 29.53, in the stdlib's own style ("Return True if the
object is currently active.").
"""

from configs import base
from configs import llama


def get_config(arg=None):
  preset = arg or 'scratch'
  if preset == 'smollm2':
    return llama.smollm2_lora_task(
        'docstring_summaries',
        'Summarize this Python function in one line:\n{source}', seq_len=160,
        target_len=32, num_steps=120)
  if preset != 'scratch':
    raise ValueError(f"unknown preset {preset!r}; use 'scratch' or 'smollm2'")
  config = base.get_base_config()
  config.model.update(
      family='encoder_decoder', vocab_size=8000, d_model=256, num_layers=3,
      num_heads=4, head_dim=64, d_ff=1024, activation='relu', norm='rmsnorm',
      norm_position='pre', norm_eps=1e-6, position='relative',
      relative_buckets=32, relative_max_distance=128, scale_queries=False,
      tie_embeddings=True, rescale_tied_head=True, use_bias=False,
      dropout_rate=0.1, max_len=128)
  config.data.update(name='docstring_summaries', objective='seq2seq',
                     tokenizer='sentencepiece', vocab_size=8000, seq_len=128,
                     target_len=32, batch_size=32, eval_batch_size=64)
  config.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.01)
  config.train.update(num_steps=400, log_every=50, eval_every=200,
                      checkpoint_every=200)
  config.evaluate.update(beam_size=4, length_penalty=0.6, batch_size=64)
  return config
