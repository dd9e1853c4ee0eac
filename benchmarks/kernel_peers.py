r"""The kernels of a config's train step, timed in lm's JAX and in PyTorch.

  python -m benchmarks.kernel_peers --config=configs/bench/gpt_cpu.py

benchmarks/benchmark.py and benchmarks/torch_peer.py time whole steps;
this says where a difference between them comes from. It times, alone and
on the same inputs in both frameworks, each matrix product one train step
of the config's decoder runs (every dense layer's forward product and its
two backward ones, the output layer's three; each weight gradient as lm
computes it, through lm.kernels.matmul.dense or the tied output layer's einsum)
and causal attention's
forward and backward pass (lm.kernels.causal_attention.causal_attention against
`F.scaled_dot_product_attention`). It prints one JSON line per kernel
(median seconds and GFLOP/s in each, and how many times a step runs it),
then a summary line: the seconds per step both spend in matrix products and
in attention, and PyTorch's speed over lm's.
"""

import json

from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import torch
from torch.nn import functional as F

from experiments import cli
from lm.kernels import causal_attention
from lm.kernels import matmul
from lm.model.config import ModelConfig
from lm.perf import timing

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/bench/gpt_cpu.py.')
_REPEATS = flags.DEFINE_integer('repeats', 10, 'Timed calls per kernel.',
                                lower_bound=1)

# Which operand a product reads transposed: forward x W is 'nn', the input
# gradient dY W^T is 'nt', the weight gradient X^T dY is 'tn'.
_LAYOUTS = {'nn': ((1,), (0,)), 'nt': ((1,), (1,)), 'tn': ((0,), (0,))}


def _products(config) -> list[dict]:
  """Each matrix product of one train step: [M, K] x [K, N], its layout and
  how many times the step runs it."""
  c = ModelConfig.from_config(config.model)
  tokens = config.data.batch_size * config.data.seq_len
  depth, width = c.num_layers, c.head_width
  mlp_inputs = 2 if c.gated_mlp else 1
  dense = [('attention_query', c.d_model, c.num_heads * width, depth),
           ('attention_key_value', c.d_model, c.kv_heads * width, 2 * depth),
           ('attention_out', c.num_heads * width, c.d_model, depth),
           ('mlp_in', c.d_model, c.d_ff, mlp_inputs * depth),
           ('mlp_out', c.d_ff, c.d_model, depth)]
  products = []
  for name, d_in, d_out, count in dense:
    products += [
        dict(kernel=f'{name}/forward', m=tokens, k=d_in, n=d_out,
             layout='nn', count=count),
        dict(kernel=f'{name}/input_gradient', m=tokens, k=d_out, n=d_in,
             layout='nt', count=count),
        dict(kernel=f'{name}/weight_gradient', m=d_in, k=tokens, n=d_out,
             layout='tn', count=count, lm='dense')]
  # A tied output layer multiplies by the [V, D] embedding table: x E^T,
  # dLogits E, dLogits^T x.
  vocab = c.vocab_size
  tied = c.tie_embeddings
  products += [
      dict(kernel='output_layer/forward', m=tokens, k=c.d_model, n=vocab,
           layout='nt' if tied else 'nn', count=1),
      dict(kernel='output_layer/input_gradient', m=tokens, k=vocab,
           n=c.d_model, layout='nn' if tied else 'nt', count=1),
      dict(kernel='output_layer/weight_gradient', m=vocab if tied else
           c.d_model, k=tokens, n=c.d_model if tied else vocab, layout='tn',
           count=1, lm='tied' if tied else 'dense')]
  return products


def _lm_weight_gradient(how: str):
  """[K, M] x [K, N] -> [M, N] the way lm's train step gets it: the
  gradient of lm.kernels.matmul.dense (M inputs, N outputs) or of the tied
  output layer's einsum (M vocabulary rows, N model width)."""
  if how == 'dense':
    def gradient(x_KM, d_y_KN):
      kernel = jnp.zeros((x_KM.shape[1], d_y_KN.shape[1]), x_KM.dtype)
      return jax.vjp(lambda w: matmul.dense(x_KM, w), kernel)[1](d_y_KN)[0]
  else:
    def gradient(d_logits_KM, x_KN):
      table = jnp.zeros((d_logits_KM.shape[1], x_KN.shape[1]), x_KN.dtype)
      return jax.vjp(lambda e: jnp.einsum('td,vd->tv', x_KN, e),
                     table)[1](d_logits_KM)[0]
  return gradient


def _time_product(p: dict, repeats: int) -> dict:
  rng = np.random.default_rng(0)
  lhs_shape = (p['k'], p['m']) if p['layout'] == 'tn' else (p['m'], p['k'])
  rhs_shape = (p['n'], p['k']) if p['layout'] == 'nt' else (p['k'], p['n'])
  lhs = rng.standard_normal(lhs_shape, np.float32)
  rhs = rng.standard_normal(rhs_shape, np.float32)
  contract = _LAYOUTS[p['layout']]
  product = jax.jit(_lm_weight_gradient(p['lm']) if 'lm' in p else
                    lambda a, b: lax.dot_general(a, b, (contract, ((), ()))))
  a, b = jnp.asarray(lhs), jnp.asarray(rhs)
  jax_s = timing.median_seconds(lambda: product(a, b).block_until_ready(),
                                repeats)
  ta, tb = torch.from_numpy(lhs), torch.from_numpy(rhs)
  ta = ta.t() if p['layout'] == 'tn' else ta
  tb = tb.t() if p['layout'] == 'nt' else tb
  torch_s = timing.median_seconds(lambda: ta @ tb, repeats)
  return _row(p, 2 * p['m'] * p['k'] * p['n'], jax_s, torch_s)


def _time_attention(config, repeats: int) -> dict:
  """Causal attention, forward and backward, on the config's shapes."""
  c = ModelConfig.from_config(config.model)
  shape = (config.data.batch_size, config.data.seq_len, c.num_heads,
           c.head_width)
  kv_shape = shape[:2] + (c.kv_heads, c.head_width)
  rng = np.random.default_rng(0)
  q, k, v, d_out = (rng.standard_normal(s, np.float32)
                    for s in (shape, kv_shape, kv_shape, shape))
  allowed_BLS = jnp.broadcast_to(jnp.tril(jnp.ones(shape[1:2] * 2, bool)),
                                 (shape[0],) + shape[1:2] * 2)

  def loss(q, k, v, d_out):  # What lm's causal self-attention runs.
    return jnp.sum(causal_attention.causal_attention(
        q, k, v, None, allowed_BLS, None) * d_out)

  gradients = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  args = [jnp.asarray(x) for x in (q, k, v, d_out)]
  jax_s = timing.median_seconds(
      lambda: jax.block_until_ready(gradients(*args)), repeats)
  # PyTorch's layout is [B, N, L, H].
  tq, tk, tv = (torch.from_numpy(x).transpose(1, 2).contiguous()
                .requires_grad_() for x in (q, k, v))
  t_out = torch.from_numpy(d_out).transpose(1, 2).contiguous()

  def torch_step():
    for x in (tq, tk, tv):
      x.grad = None
    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True,
                                         enable_gqa=True)
    (out * t_out).sum().backward()

  torch_s = timing.median_seconds(torch_step, repeats)
  batch, length, heads, width = shape
  # Forward 2 products, backward 4, each 2*L*L*H per head: model FLOPs, as
  # if no masked block were skipped (both skip some).
  flops = 6 * 2 * batch * heads * length * length * width
  return _row(dict(kernel='causal_attention/forward_and_backward',
                   shape=list(shape), kv_heads=c.kv_heads,
                   count=c.num_layers), flops, jax_s, torch_s)


def _row(kernel: dict, flops: int, jax_s: float, torch_s: float) -> dict:
  figures = lambda x: float(f'{x:.4g}')  # Tiny test models run in µs.
  return {**kernel, 'lm_s': figures(jax_s), 'torch_s': figures(torch_s),
          'lm_gflops': figures(flops / jax_s / 1e9),
          'torch_gflops': figures(flops / torch_s / 1e9)}


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  config = cli.get_config(_CONFIG)
  m = config.model
  if m.family != 'decoder' or m.num_experts:
    cli.fail('kernel_peers times the train step of a dense decoder; this '
             f'config has model.family={m.family!r}, num_experts='
             f'{m.num_experts} (try configs/bench/gpt_cpu.py)')
  rows = [_time_product(p, _REPEATS.value) for p in _products(config)]
  attention = _time_attention(config, _REPEATS.value)
  for row in rows + [attention]:
    print(json.dumps(row), flush=True)
  per_step = lambda rows, key: sum(r[key] * r['count'] for r in rows)
  summary = {
      'torch': torch.__version__, 'threads': torch.get_num_threads(),
      'matmul_s_per_step': {'lm': round(per_step(rows, 'lm_s'), 4),
                            'torch': round(per_step(rows, 'torch_s'), 4)},
      'attention_s_per_step': {
          'lm': round(per_step([attention], 'lm_s'), 4),
          'torch': round(per_step([attention], 'torch_s'), 4)}}
  for part in ('matmul_s_per_step', 'attention_s_per_step'):
    summary[part]['torch_speedup'] = round(
        summary[part]['lm'] / summary[part]['torch'], 3)
  print(json.dumps(summary), flush=True)


if __name__ == '__main__':
  cli.run(main)
