r"""Compresses a workdir into a new one, or reports on several.

  python -m experiments.compress --workdir=SRC --method=int8 --output=DST
  python -m experiments.compress --workdir=SRC --method=int4 --group=64 \
      --output=DST
  python -m experiments.compress --workdir=SRC --method=prune --pattern=2:4 \
      --output=DST
  python -m experiments.compress --report=DIR1,DIR2,... [--names=a,b,...] \
      [--plot=report.png]

Methods: 'int8' (weight-only, one scale per output channel) and 'int4'
(weight-only, one scale per --group weights), both with --kv_cache=int8 for
an int8 KV cache too; 'prune': one-shot magnitude pruning of the dense
kernels, --pattern=unstructured (--sparsity of each kernel) or N:M such as
2:4. To prune gradually while training, see config.prune (configs/base.py);
'merge_lora': a LoRA-trained workdir's adapters folded into its kernels;
'deep_compression': the kernels' nonzero weights shared among 2**--bits
values by k-means, their indices and positions Huffman-coded into one file
(prune first); it prints the compression ratio from that file's bytes. The
source is never changed; the output is a complete workdir for generate.py,
evaluate.py and --report.

--report prints one JSON line per workdir, then a Markdown table: params on
disk, weights (and how many are nonzero), validation bits per byte (and the
change from the first workdir) and greedy decode tokens/s; --plot writes the
same as a PNG. Scoring writes each workdir's eval/ JSON, as evaluate.py does.
"""

import json

from absl import flags

from configs import base
from experiments import cli
from lm.compress import prune
from lm.compress import workdirs
from lm.evaluate import compression_report as report
from lm.io import config_file

_METHODS = ('int8', 'int4', 'prune', 'merge_lora', 'deep_compression')

_WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir to compress.')
_METHOD = flags.DEFINE_enum('method', None, _METHODS, 'What to apply.')
_OUTPUT = flags.DEFINE_string('output', None, 'The new workdir to write.')
_GROUP = flags.DEFINE_integer('group', 64, 'int4: weights per scale.',
                              lower_bound=1)
_KV_CACHE = flags.DEFINE_enum('kv_cache', 'float', ('float', 'int8'),
                              'The KV cache the output decodes with.')
_PATTERN = flags.DEFINE_string('pattern', '2:4',
                               "prune: 'unstructured' or N:M such as 2:4.")
_SPARSITY = flags.DEFINE_float('sparsity', 0.5,
                               'prune, unstructured: the fraction of zeros.',
                               lower_bound=0.0, upper_bound=1.0)
_BITS = flags.DEFINE_integer('bits', 5, 'deep_compression: 2**bits shared '
                             'values per kernel.', lower_bound=1,
                             upper_bound=16)
_REPORT = flags.DEFINE_list('report', None, 'Workdirs to measure.')
_NAMES = flags.DEFINE_list('names', None, 'Their names in the table.')
_PLOT = flags.DEFINE_string('plot', None, 'Where to write the PNG.')
_TITLE = flags.DEFINE_string('title', 'Compression: size, quality, speed',
                             "The PNG's title.")
_NEW_TOKENS = flags.DEFINE_integer('decode_tokens', 96,
                                   'Tokens per row in the speed test.',
                                   lower_bound=1)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  if _REPORT.value:
    return run_report()
  if not (_WORKDIR.value and _METHOD.value and _OUTPUT.value):
    cli.fail('give --workdir, --method and --output to compress, or '
             '--report=DIR,... to measure workdirs')
  cli.setup_jax()
  if _METHOD.value == 'prune':
    config = prune.PruneConfig(pattern=_PATTERN.value,
                               sparsity=_SPARSITY.value)
    config.validate()
    if config.pattern == 'none':
      cli.fail("--pattern=none prunes nothing; use 'unstructured' or N:M")
    sparsity = workdirs.prune_workdir(_WORKDIR.value, _OUTPUT.value, config,
                                      base.get_base_config())
    print(f'Wrote {_OUTPUT.value}: {config.pattern} pruning, '
          f'{sparsity:.1%} of the dense kernels are zero')
    return
  if _METHOD.value == 'deep_compression':
    stats = workdirs.deep_compress_workdir(
        _WORKDIR.value, _OUTPUT.value, _BITS.value,
        defaults=base.get_base_config())
    print(json.dumps(stats))
    print(f'Wrote {_OUTPUT.value}: {stats["float32_bytes"]:,} float32 bytes '
          f'-> {stats["compressed_bytes"]:,} ({stats["ratio"]:.1f}x)')
    return
  if _METHOD.value == 'merge_lora':
    workdirs.merge_lora_workdir(_WORKDIR.value, _OUTPUT.value,
                                base.get_base_config())
    print(f'Wrote {_OUTPUT.value}: LoRA adapters merged into their kernels')
    return
  model_config = workdirs.quantize_workdir(
      _WORKDIR.value, _OUTPUT.value, _METHOD.value, _GROUP.value,
      _KV_CACHE.value, base.get_base_config())
  print(f'Wrote {_OUTPUT.value}: model.quant={model_config.quant!r}, '
        f'quant_group={model_config.quant_group}, '
        f'kv_cache={model_config.kv_cache!r}')


def run_report():
  names = _NAMES.value or _REPORT.value
  if len(names) != len(_REPORT.value):
    cli.fail(f'--names has {len(names)} entries for {len(_REPORT.value)} '
             'workdirs in --report')
  for workdir in _REPORT.value:  # Each is checked before any is measured.
    config_file.load_config(workdir)
  cli.setup_jax()
  rows = []
  for name, workdir in zip(names, _REPORT.value):
    row = report.measure(workdir, base.get_base_config(), _NEW_TOKENS.value)
    print(json.dumps({'name': name, **row}), flush=True)
    rows.append(row)
  print(report.markdown(rows, names))
  if _PLOT.value:
    report.plot(rows, names, _PLOT.value, _TITLE.value)
    print(f'Wrote {_PLOT.value}')


if __name__ == '__main__':
  cli.run(main)
