"""Llama-style architectures: llama2_7b and smollm2_135m.

  python -m experiments.train --config=configs/llama.py:smollm2_135m --workdir=DIR

RMSNorm, SwiGLU, rotary positions, no biases; SmolLM2 adds grouped-query
attention (3 key/value heads) and tied embeddings. Parameter counts equal
the published models (Llama 2 7B: 6,738,415,616; SmolLM2-135M:
134,515,008), as tests/configs_test.py checks.

The task configs fine-tune the imported SmolLM2-135M-Instruct through the
helpers below (`from_smollm2`, `smollm2_lora_task`): its architecture is
defined here, so the recipe that loads it lives beside it.
"""

from configs import base

SMOLLM2_WORKDIR = 'workdirs/smollm2'  # experiments/convert.py's import (README)

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


def from_smollm2(config, lora_rank: int = 0):
  """Sets `config` to fine-tune the imported SmolLM2-135M-Instruct on a
  text-pair task, with the loss on the answer only: all of it, or LoRA
  adapters of `lora_rank` on every projection (the frozen weights then
  form no gradient)."""
  config.model.update(get_config('smollm2_135m').model)
  if lora_rank:
    config.model.update(lora_rank=lora_rank, lora_alpha=2.0 * lora_rank,
                        lora_targets=('query', 'key', 'value', 'out', 'wi_0',
                                      'wi_1', 'wo'))
  config.data.update(objective='instruct', tokenizer=SMOLLM2_WORKDIR)
  config.init_from = SMOLLM2_WORKDIR
  config.optim.update(weight_decay=0.0)


def chat_turn(request: str) -> str:
  """A data.prompt asking `request` (which holds '{source}') as one user
  turn in SmolLM2's chat format, the answer being the assistant's."""
  return f'<|im_start|>user\n{request}<|im_end|>\n<|im_start|>assistant\n'


def smollm2_lora_task(dataset: str, request: str, *, seq_len: int,
                      target_len: int, num_steps: int):
  """A config that fine-tunes SmolLM2-135M-Instruct on `dataset`'s text
  pairs with LoRA adapters of rank 16, asking `request` (with '{source}')
  as a chat turn: batches of 8 at rate 1e-3, greedy scoring 32 at a time."""
  config = base.get_base_config()
  from_smollm2(config, lora_rank=16)
  config.data.update(name=dataset, seq_len=seq_len, target_len=target_len,
                     batch_size=8, eval_batch_size=32,
                     prompt=chat_turn(request))
  config.optim.update(learning_rate=1e-3, warmup_steps=20)
  config.train.update(num_steps=num_steps, log_every=10, eval_every=num_steps,
                      checkpoint_every=num_steps // 2, eval_steps=8)
  config.evaluate.update(batch_size=32)
  return config
