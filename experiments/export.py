r"""Exports a workdir's latest params as a Hugging Face checkpoint.

  python -m experiments.export --workdir=DIR --output=DIR

Writes model.safetensors (float32), config.json and the tokenizer, loadable
with transformers' `AutoModel.from_pretrained(output)`. Decoder-only models
export as GPT-2 or Llama, encoders as BERT, whichever layout the model's
config matches; otherwise the error names the keys that do not fit.
"""

from absl import flags

from experiments import cli
from lm import convert

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir with a checkpoint.',
                               required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'A new directory to create.',
                              required=True)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  arch = convert.export_workdir(_WORKDIR.value, _OUTPUT.value)
  print(f'Exported {_WORKDIR.value} to {_OUTPUT.value} as a Hugging Face '
        f'{arch} checkpoint.')


if __name__ == '__main__':
  cli.run(main)
