r"""The PyTorch peer of benchmarks/benchmark.py: the same model, timed alike.

  python -m benchmarks.torch_peer --config=configs/bench/gpt_cpu.py

A straightforward nanoGPT-style implementation (eager PyTorch, fused QKV
projection, `F.scaled_dot_product_attention`, AdamW) of the config's GPT-2
style decoder, random weights and random tokens, prints one JSON line:

- train_tokens_per_s: median step (forward, backward, AdamW) over
  config.bench.steps steps after config.bench.warmup_steps;
- decode_tokens_per_s: greedy generation of config.bench.new_tokens after
  prompts of config.bench.prompt_len, config.bench.decode_batch rows, with a
  preallocated KV cache, prefill included (as lm's is timed);
- hf_generate_tokens_per_s: the same with `transformers`' GPT2LMHeadModel
  and `generate()` (its own KV cache), same sizes.

`--only=alternate` instead calls lm's `generate.generate` and the KV-cache
loop in turn, config.bench.decode_repeats rounds in this one process, and
prints both decode speeds and their ratio: on a machine whose speed drifts
from second to second (a shared VM), both then meet the same states, where
two separate runs may not.

torch and transformers come with the test extras (setup.cfg).
"""

import json
import math
import statistics

from absl import flags
from ml_collections import config_flags
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks import measure
from experiments import cli
from lm.kernels import allocator
from lm.perf import timing

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/bench/gpt_cpu.py.')
_ONLY = flags.DEFINE_enum(
    'only', '', ['', 'train', 'decode', 'hf', 'alternate'],
    "Measure only one of the three, or ('alternate') lm's decoding and the "
    'PyTorch loop in turn.')


class SelfAttention(nn.Module):

  def __init__(self, d_model, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(d_model, 3 * d_model)
    self.out = nn.Linear(d_model, d_model)

  def forward(self, x, cache=None, start=0):
    b, t, d = x.shape
    q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
               for y in self.qkv(x).split(d, dim=2))
    if cache is None:
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
      keys, values = cache
      keys[:, :, start:start + t] = k
      values[:, :, start:start + t] = v
      k, v = keys[:, :, :start + t], values[:, :, :start + t]
      # A prefill (t > 1) attends causally; one new token sees everything.
      y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
    return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):

  def __init__(self, d_model, heads, d_ff):
    super().__init__()
    self.ln_1 = nn.LayerNorm(d_model)
    self.attn = SelfAttention(d_model, heads)
    self.ln_2 = nn.LayerNorm(d_model)
    self.fc = nn.Linear(d_model, d_ff)
    self.proj = nn.Linear(d_ff, d_model)

  def forward(self, x, cache=None, start=0):
    x = x + self.attn(self.ln_1(x), cache, start)
    return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate='tanh'))


class Gpt(nn.Module):
  """Pre-LN GPT-2: learned positions, tied output layer."""

  def __init__(self, vocab, d_model, layers, heads, d_ff, max_len):
    super().__init__()
    self.wte = nn.Embedding(vocab, d_model)
    self.wpe = nn.Embedding(max_len, d_model)
    self.blocks = nn.ModuleList(Block(d_model, heads, d_ff)
                                for _ in range(layers))
    self.ln_f = nn.LayerNorm(d_model)
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.normal_(p, std=0.02)

  def forward(self, tokens, caches=None, start=0):
    positions = torch.arange(start, start + tokens.shape[1])
    x = self.wte(tokens) + self.wpe(positions)
    for i, block in enumerate(self.blocks):
      x = block(x, None if caches is None else caches[i], start)
    return self.ln_f(x) @ self.wte.weight.T

  @torch.inference_mode()
  def generate(self, prompts, new_tokens):
    b, p = prompts.shape
    heads = self.blocks[0].attn.heads
    d = self.wte.weight.shape[1]
    caches = [(torch.empty(b, heads, p + new_tokens, d // heads),
               torch.empty(b, heads, p + new_tokens, d // heads))
              for _ in self.blocks]
    token = self(prompts, caches)[:, -1].argmax(-1, keepdim=True)
    out = [token]
    for i in range(1, new_tokens):
      token = self(token, caches, p + i - 1)[:, -1].argmax(-1, keepdim=True)
      out.append(token)
    return torch.cat(out, 1)


def _alternate_decoding(config, model, prompts) -> dict:
  """Seconds of lm's generate and of the KV-cache loop, called in turn."""
  cli.setup_jax()
  bc = config.bench
  lm_model, lm_config, params = measure.random_decoder(config)
  lm_prompts = prompts.tolist()
  model.eval()
  times = timing.alternating_seconds({
      'lm': lambda: measure.greedy_generate(config, lm_model, lm_config,
                                              params, lm_prompts),
      'torch': lambda: model.generate(prompts, bc.new_tokens)},
                                     rounds=bc.decode_repeats)
  lm_s, torch_s = (statistics.median(times[k]) for k in ('lm', 'torch'))
  new_tokens = bc.decode_batch * bc.new_tokens
  return {'alternate_rounds': bc.decode_repeats,
          'lm_generate_s': round(lm_s, 4),
          'lm_decode_tokens_per_s': round(new_tokens / lm_s, 1),
          'generate_s': round(torch_s, 4),
          'decode_tokens_per_s': round(new_tokens / torch_s, 1),
          'lm_over_torch_decode': round(torch_s / lm_s, 2)}


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  config = cli.get_config(_CONFIG)
  mc, dc, oc, bc = config.model, config.data, config.optim, config.bench
  if not (mc.family == 'decoder' and mc.position == 'learned' and
          mc.norm == 'layernorm' and mc.norm_position == 'pre' and
          mc.activation == 'gelu' and not mc.gated_mlp and mc.tie_embeddings
          and mc.use_bias and mc.num_kv_heads in (0, mc.num_heads)):
    cli.fail('the PyTorch peer builds GPT-2-style models (pre-LN, learned '
             'positions, GELU, biases, tied output layer, no GQA) such as '
             'configs/bench/gpt_cpu.py')
  torch.manual_seed(0)
  model = Gpt(mc.vocab_size, mc.d_model, mc.num_layers, mc.num_heads,
              mc.d_ff, mc.max_len)
  result = {'torch': torch.__version__, 'threads': torch.get_num_threads(),
            **allocator.malloc_settings()}
  rng = np.random.default_rng(0)
  if _ONLY.value in ('', 'train'):
    window = torch.from_numpy(rng.integers(
        0, mc.vocab_size, (dc.batch_size, dc.seq_len + 1)))
    inputs, targets = window[:, :-1], window[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=oc.learning_rate,
                                  betas=(oc.b1, oc.b2), eps=oc.eps,
                                  weight_decay=oc.weight_decay)
    losses = []

    def train_step():
      logits = model(inputs)
      loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                             targets.reshape(-1))
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip_norm)
      optimizer.step()
      losses.append(loss.item())

    step_s = timing.median_seconds(train_step, bc.steps,
                                   warmup=bc.warmup_steps)
    result.update(train_step_s=round(step_s, 4), train_tokens_per_s=round(
        dc.batch_size * dc.seq_len / step_s, 1),
                  final_loss=round(losses[-1], 4))
    assert math.isfinite(losses[-1])
  prompts = torch.from_numpy(rng.integers(
      3, mc.vocab_size, (bc.decode_batch, bc.prompt_len)))
  new_tokens = bc.decode_batch * bc.new_tokens
  if _ONLY.value in ('', 'decode'):
    model.eval()
    generate_s = timing.median_seconds(
        lambda: model.generate(prompts, bc.new_tokens),
        repeats=bc.decode_repeats)
    result.update(generate_s=round(generate_s, 4),
                  decode_tokens_per_s=round(new_tokens / generate_s, 1))
  if _ONLY.value == 'alternate':
    result.update(_alternate_decoding(config, model, prompts))
  if _ONLY.value in ('', 'hf'):
    import transformers  # pylint: disable=g-import-not-at-top
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=mc.vocab_size, n_positions=mc.max_len, n_embd=mc.d_model,
        n_layer=mc.num_layers, n_head=mc.num_heads, n_inner=mc.d_ff,
        activation_function='gelu_new', resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=True)).eval()

    def hf_generate():
      with torch.inference_mode():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts),
                          max_new_tokens=bc.new_tokens,
                          min_new_tokens=bc.new_tokens, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
      assert out.shape[1] == bc.prompt_len + bc.new_tokens

    hf_s = timing.median_seconds(hf_generate, repeats=bc.decode_repeats)
    result.update(hf_generate_s=round(hf_s, 4),
                  hf_generate_tokens_per_s=round(new_tokens / hf_s, 1),
                  transformers=transformers.__version__)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.run(main)
