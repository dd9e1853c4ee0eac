r"""Compiled memory of one train step, with and without the memory savers.

  python -m experiments.memory --config=configs/default.py \
      --config.model.num_layers=12

Compiles the config's train step with layers looped or scanned and with
each remat policy, and prints one JSON line per variant: XLA's memory
analysis per device (arguments, outputs, temporaries, and their peak) and
the compile time. Nothing is run or trained.
"""

import json
import time

from absl import flags
from ml_collections import config_flags

from experiments import cli
from lm.train.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/default.py[:preset].')
_VARIANTS = flags.DEFINE_list(
    'variants', ['loop:none', 'scan:none', 'scan:dots', 'scan:full'],
    'LAYERS:REMAT pairs; LAYERS is loop or scan, REMAT none, dots or full.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  config = cli.get_config(_CONFIG)
  for variant in _VARIANTS.value:
    layers, _, remat = variant.partition(':')
    if layers not in ('loop', 'scan') or remat not in ('none', 'dots',
                                                       'full'):
      cli.fail(f'--variants: {variant!r} is not LAYERS:REMAT with LAYERS '
               'loop or scan and REMAT none, dots or full')
    config.model.update(scan_layers=layers == 'scan', remat=remat)
    start = time.perf_counter()
    sizes = Trainer(config).step_memory()
    print(json.dumps({
        'variant': variant, 'num_layers': config.model.num_layers,
        'batch_size': config.data.batch_size,
        'seq_len': config.data.seq_len,
        **sizes,
        'peak_mib': round(sizes['peak_bytes'] / 2**20, 1),
        'compile_s': round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == '__main__':
  cli.run(main)
