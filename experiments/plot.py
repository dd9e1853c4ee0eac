r"""Draws the curves of runs side by side, from their TensorBoard files.

  python -m experiments.plot --workdir=workdirs/default \
      --workdir=workdirs/default_lora --out=curves.png \
      [--metrics=eval/bits_per_byte,train/loss] [--names=base,lora]

Writes one PNG: a panel per metric, a line per workdir.
"""

import os

from absl import flags

from experiments import cli
from lm.evaluate import curves

_WORKDIRS = flags.DEFINE_multi_string('workdir', None, 'A run to draw; repeat '
                                      'the flag to compare runs.',
                                      required=True)
_NAMES = flags.DEFINE_list('names', None, 'Legend names, one per --workdir '
                           '(default: the workdirs).')
_METRICS = flags.DEFINE_list('metrics', ['eval/bits_per_byte', 'train/loss'],
                             'TensorBoard tags to draw, e.g. eval/loss.')
_OUT = flags.DEFINE_string('out', None, 'The PNG to write.', required=True)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  if not _OUT.value.endswith('.png'):
    cli.fail(f'--out={_OUT.value} must name a .png file')
  folder = os.path.dirname(os.path.abspath(_OUT.value))
  if not os.path.isdir(folder):
    cli.fail(f'--out={_OUT.value}: the folder {folder} does not exist')
  if not _METRICS.value:
    cli.fail('--metrics is empty; give TensorBoard tags such as eval/loss')
  curves.plot_runs(_WORKDIRS.value, _NAMES.value or _WORKDIRS.value,
                   _METRICS.value, _OUT.value)
  print(f'Wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
