r"""Training and generation speed of a config's model, as one JSON line.

  python -m benchmarks.benchmark --config=configs/bench/gpt_cpu.py
  python -m benchmarks.benchmark --config=configs/bench/gpt_cpu.py \
      --sweep --sweep_out=docs/sweep.jsonl --plot=docs/sweep.png

Random weights and random tokens; see benchmarks/measure.py for what is
timed.
The line holds the median train-step time and train_tokens_per_s over
config.bench.steps steps after config.bench.warmup_steps, model FLOPs per
token (lm/perf/flops.py gives the formula), achieved GFLOP/s, this process's
measured matmul peak and the MFU against it (and against the datasheet peak
on a GPU or TPU), compile time, the train step's peak memory, and
prefill_tokens_per_s and decode_tokens_per_s of greedy generation (with
the fraction of the memory-bandwidth roofline on a GPU or TPU).
--decode_batches=1,64 measures generation at each batch size, under
"decode". --only=train or --only=decode runs one half.

--sweep instead measures tokens/s and peak memory of the train step for
each --seq_lens (at --sweep_batch rows, with 'auto' and 'blockwise'
attention) and each --layer_counts (at the config's batch and length),
writes one JSON line per point to --sweep_out and draws --plot.
"""

import json

from absl import flags
import jax
from ml_collections import config_flags

from benchmarks import measure
from experiments import cli
from lm.kernels import allocator
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.perf import flops

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/bench/gpt_cpu.py.')
_ONLY = flags.DEFINE_enum('only', '', ['', 'train', 'decode'],
                          'Measure only training or only generation.')
_DECODE_BATCHES = flags.DEFINE_list(
    'decode_batches', [], 'Generation: batch sizes to measure, each under '
    '"decode" (default: config.bench.decode_batch, at the top level).')
_SWEEP = flags.DEFINE_bool('sweep', False, 'Run the scaling sweep instead.')
_SEQ_LENS = flags.DEFINE_list('seq_lens', ['128', '256', '512', '1024', '2048'],
                              'Sweep: sequence lengths.')
_LAYER_COUNTS = flags.DEFINE_list('layer_counts', ['2', '4', '6', '8', '12'],
                                  'Sweep: numbers of layers.')
_SWEEP_BATCH = flags.DEFINE_integer(
    'sweep_batch', 1, 'Sweep: rows per batch of the sequence-length points.',
    lower_bound=1)
_SWEEP_STEPS = flags.DEFINE_integer('sweep_steps', 3,
                                    'Sweep: timed steps per point.',
                                    lower_bound=1)
_SWEEP_OUT = flags.DEFINE_string('sweep_out', '',
                                 'Sweep: JSON-lines file to write.')
_PLOT = flags.DEFINE_string('plot', '', 'Sweep: PNG file to draw.')


def _ints(flag) -> list[int]:
  try:
    values = [int(v) for v in flag.value]
  except ValueError:
    cli.fail(f'--{flag.name}={",".join(flag.value)}: not integers')
  if not values or min(values) <= 0:
    cli.fail(f'--{flag.name} needs positive integers')
  return values


def sweep(config, peak):
  """One result per point: lengths with both attentions, then depths."""
  base = config.copy_and_resolve_references()
  base.bench.update(steps=_SWEEP_STEPS.value, warmup_steps=1)
  for attention in ('auto', 'blockwise'):
    for seq_len in _ints(_SEQ_LENS):
      point = base.copy_and_resolve_references()
      point.model.update(attention=attention,
                         max_len=max(point.model.max_len, seq_len))
      point.data.update(seq_len=seq_len, batch_size=_SWEEP_BATCH.value)
      yield {'sweep': 'seq_len', 'attention': attention,
             'seq_len': seq_len, 'batch_size': _SWEEP_BATCH.value,
             'num_layers': point.model.num_layers,
             **measure.measure_train(point, peak)}
  for num_layers in _ints(_LAYER_COUNTS):
    point = base.copy_and_resolve_references()
    point.model.num_layers = num_layers
    yield {'sweep': 'num_layers', 'attention': point.model.attention,
           'seq_len': point.data.seq_len,
           'batch_size': point.data.batch_size, 'num_layers': num_layers,
           **measure.measure_train(point, peak)}


def plot(points, path):
  """Tokens/s and peak memory against length (both attentions) and depth."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  by_length = [p for p in points if p['sweep'] == 'seq_len']
  for attention, style in (('auto', 'o-'), ('blockwise', 's--')):
    rows = [p for p in by_length if p['attention'] == attention]
    lengths = [p['seq_len'] for p in rows]
    axes[0].plot(lengths, [p['train_tokens_per_s'] for p in rows], style,
                 label=f'{attention} attention')
    axes[1].plot(lengths, [p['train_peak_mib'] for p in rows], style,
                 label=f'{attention} attention')
  for ax in axes[:2]:
    ax.set_xscale('log', base=2)
    ax.set_xlabel('sequence length (tokens)')
  batch = by_length[0]['batch_size'] if by_length else 0
  axes[0].set(ylabel='train tokens/s',
              title=f'Throughput vs length (batch {batch})')
  axes[1].set(ylabel='train step peak memory (MiB)',
              title='Memory vs length (XLA memory analysis)')
  depth = [p for p in points if p['sweep'] == 'num_layers']
  if depth:
    layers = [p['num_layers'] for p in depth]
    axes[2].plot(layers, [p['train_tokens_per_s'] for p in depth], 'o-',
                 label='train tokens/s')
    twin = axes[2].twinx()
    twin.plot(layers, [p['train_peak_mib'] for p in depth], 's--',
              color='tab:red', label='peak memory (MiB)')
    twin.set_ylabel('train step peak memory (MiB)')
    axes[2].set(xlabel='layers', ylabel='train tokens/s',
                title=f'Depth (batch {depth[0]["batch_size"]} x '
                f'{depth[0]["seq_len"]} tokens)')
    lines = axes[2].get_lines() + twin.get_lines()
    axes[2].legend(lines, [l.get_label() for l in lines], loc='center right')
  for ax in axes[:2]:
    ax.legend()
    ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  config = cli.get_config(_CONFIG)  # bench: lm/perf/bench_config.py checks
  # Refused before any work.
  if _SWEEP.value:
    _ints(_SEQ_LENS), _ints(_LAYER_COUNTS)
  decode_batches = _ints(_DECODE_BATCHES) if _DECODE_BATCHES.value else []
  model_config = ModelConfig.from_config(config.model)
  peak = flops.peak_flops(model_config.dtype)
  if _SWEEP.value:
    points = []
    out = open(_SWEEP_OUT.value, 'w') if _SWEEP_OUT.value else None
    for point in sweep(config, peak):
      points.append(point)
      line = json.dumps(point)
      print(line, flush=True)
      if out:
        out.write(line + '\n')
        out.flush()
    if out:
      out.close()
    if _PLOT.value:
      plot(points, _PLOT.value)
      print(f'Wrote {_PLOT.value}', flush=True)
    return
  result = {'config': flags.FLAGS['config'].config_filename,
            'device': jax.devices()[0].device_kind,
            'devices': jax.device_count(), 'jax': jax.__version__,
            'params': model_params.count_params(model_params.abstract_params(
                registry.build_model(model_config))),
            'batch_size': config.data.batch_size,
            'seq_len': config.data.seq_len, **allocator.malloc_settings()}
  if _ONLY.value != 'decode':
    result.update(measure.measure_train(config, peak))
  if _ONLY.value != 'train' and decode_batches:
    result['decode'] = [measure.measure_decode(config, batch)
                        for batch in decode_batches]
  elif _ONLY.value != 'train':
    result.update(measure.measure_decode(config))
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.run(main)
