"""How fast a config's model trains and generates, measured.

Random tokens (not the data pipeline) feed a model of random weights, so
that what is timed is the compiled step and nothing else, as the PyTorch
peer of benchmarks/torch_peer.py is timed. Every figure is a median over
repeated calls after compiling ones, synchronized on the result.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm.errors import UsageError
from lm.infer import generate
from lm.infer import sampling
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.perf import flops
from lm.perf import memory
from lm.perf import timing
from lm.train.trainer import Trainer


def _check_causal(config: ml_collections.ConfigDict):
  if (not registry.get(config.model.family).generates
      or config.data.objective != 'causal'):
    raise UsageError(
        'the benchmark measures causal decoders; this config has '
        f'model.family={config.model.family!r}, data.objective='
        f'{config.data.objective!r}')


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict:
  """A causal-LM batch of uniformly random tokens."""
  rng = np.random.default_rng(seed)
  window = rng.integers(0, config.model.vocab_size,
                        (config.data.batch_size, config.data.seq_len + 1),
                        dtype=np.int32)
  return {'inputs': window[:, :-1], 'targets': window[:, 1:],
          'weights': np.ones(window[:, 1:].shape, np.float32)}


def _device_peak_bytes() -> int | None:
  """Peak bytes in use on the first device since the process started, where
  the backend keeps count (GPU, TPU; not CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def measure_train(config: ml_collections.ConfigDict,
                  peak: dict | None = None) -> dict:
  """Median train-step time, tokens/s, FLOPs, MFU (against `peak`, from
  flops.peak_flops), compile time and memory of `config` (a causal decoder)
  over config.bench.steps timed steps."""
  _check_causal(config)
  trainer = Trainer(config, with_data=False)
  batch = trainer.put_batch(random_batch(config))
  state = trainer.init_state()
  start = time.perf_counter()
  step = trainer.compile_train_step(state, batch)
  compile_s = time.perf_counter() - start
  sizes = memory.memory_sizes(step)
  carry = {'state': state}

  def one_step():
    carry['state'], carry['metrics'] = step(carry['state'], batch,
                                            *trainer.step_args)
    jax.block_until_ready(carry['metrics']['loss'])

  step_s = timing.median_seconds(one_step, config.bench.steps,
                                 warmup=config.bench.warmup_steps)
  step_metrics = carry['metrics']
  tokens = config.data.batch_size * config.data.seq_len
  per_token = trainer.flops_per_token()
  achieved = per_token * tokens / step_s
  result = {
      'train_steps_timed': config.bench.steps,
      'attention_kernel': trainer.attention_kernel(),
      'train_step_s': round(step_s, 4),
      'train_tokens_per_s': round(tokens / step_s, 1),
      'flops_per_token': per_token, 'flops_formula': flops.FORMULA,
      'achieved_gflops': round(achieved / 1e9, 2),
      'compile_s': round(compile_s, 2),
      'train_peak_mib': round(sizes['peak_bytes'] / 2**20, 1),
      'final_loss': round(float(step_metrics['loss']), 4)}
  device_peak = _device_peak_bytes()
  if device_peak:
    result['device_peak_mib'] = round(device_peak / 2**20, 1)
  if peak is not None:
    # A step faster than the timed matmuls raises that peak (flops.Peak).
    measured = flops.Peak(peak['measured'], measured=True)
    result['mfu_measured'] = round(measured.mfu(achieved), 4)
    result['peak_gflops_measured'] = round(measured.flops_per_s / 1e9, 2)
    if measured.take_news():
      result['peak_raised_by_the_step'] = True
    if peak['datasheet']:
      result['peak_gflops_datasheet'] = peak['datasheet'] / 1e9
      result['mfu_datasheet'] = round(achieved / peak['datasheet'], 4)
  return result


def random_decoder(config: ml_collections.ConfigDict):
  """The config's causal decoder with random weights (seed 0): (model, its
  ModelConfig, params), what the benchmark and its peers generate with."""
  _check_causal(config)
  model_config = ModelConfig.from_config(config.model)
  model = registry.build_model(model_config)
  params = jax.jit(model_params.init_params, static_argnums=0)(
      model, jax.random.key(0))
  return model, model_config, params


def greedy_generate(config: ml_collections.ConfigDict, model, model_config,
                    params, prompts: list[list[int]]) -> list[list[int]]:
  """config.bench.new_tokens greedy tokens after each prompt: the generate
  call that decode_tokens_per_s times."""
  settings = sampling.SamplingConfig(
      max_new_tokens=config.bench.new_tokens, temperature=0.0)
  return generate.generate(model, params, prompts, sampling=settings,
                         rng=jax.random.key(0), eos_id=None,
                         max_len=model_config.context_limit)


def decode_step_bytes(model, params, batch: int, prompt_len: int,
                      new_tokens: int) -> int:
  """Bytes one decoding step reads, averaged over generate's steps: every
  weight, and the KV cache of the phase the step runs in (cache_phases)."""
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  total, done = 0, 0
  for cache_len, last_step in generate.cache_phases(prompt_len, new_tokens):
    cache = jax.eval_shape(lambda n=cache_len: generate.init_cache(
        model, batch, n))
    cache_bytes = sum(x.size * x.dtype.itemsize
                      for x in jax.tree.leaves(cache))
    total += (last_step - done) * (weights + cache_bytes)
    done = last_step
  return total // max(done, 1)


def measure_decode(config: ml_collections.ConfigDict,
                   batch: int | None = None) -> dict:
  """Prefill and greedy-generation tokens/s of `batch` (default
  config.bench.decode_batch) random prompts (median of bench.decode_repeats
  calls after a compiling one).

  decode_tokens_per_s counts the batch's new tokens over the whole
  generate call, prefill included, as peers' generate loops are timed. On a
  device with a datasheet bandwidth, decode_roofline_fraction divides it by
  the rate at which each step only reads its bytes (decode_step_bytes).
  """
  bench = config.bench
  batch = batch or bench.decode_batch
  model, model_config, params = random_decoder(config)
  rng = np.random.default_rng(1)
  prompts = rng.integers(3, model_config.vocab_size,
                         (batch, bench.prompt_len)).tolist()
  # generate's prefill, into the cache of its first decoding phase.
  cache_len = generate.cache_phases(bench.prompt_len, bench.new_tokens)[0][0]
  lengths_B = jnp.full((batch,), bench.prompt_len)
  prefill = jax.jit(lambda params, tokens_BP: generate.prefill(
      model, params, tokens_BP, lengths_B, cache_len))

  timed = lambda fn: timing.median_seconds(fn, bench.decode_repeats)

  tokens = jnp.asarray(prompts, jnp.int32)
  prefill_s = timed(lambda: jax.block_until_ready(prefill(params, tokens)))
  written = []

  def greedy():
    written[:] = greedy_generate(config, model, model_config, params, prompts)

  generate_s = timed(greedy)
  new_tokens = sum(len(row) for row in written)
  step_bytes = decode_step_bytes(model, params, batch, bench.prompt_len,
                                 bench.new_tokens)
  result = {'decode_batch': batch, 'prompt_len': bench.prompt_len,
            'new_tokens': bench.new_tokens,
            'prefill_s': round(prefill_s, 4),
            'prefill_tokens_per_s': round(
                batch * bench.prompt_len / prefill_s, 1),
            'generate_s': round(generate_s, 4),
            'decode_tokens_per_s': round(new_tokens / generate_s, 1),
            'decode_step_mib': round(step_bytes / 2**20, 1)}
  bandwidth = flops.datasheet_peak(table=flops.DATASHEET_BANDWIDTH)
  if bandwidth:
    roofline = batch * bandwidth / step_bytes
    result['decode_roofline_tokens_per_s'] = round(roofline, 1)
    result['decode_roofline_fraction'] = round(
        new_tokens / generate_s / roofline, 4)
  return result
