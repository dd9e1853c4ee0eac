r"""Imports a real checkpoint into a new workdir.

  python -m experiments.convert --source=PATH --workdir=DIR [--tokenizer=DIR]

--source is a GGUF file (Llama architecture; F32, F16, BF16, Q8_0, Q4_0 and
Q4_1 tensors are dequantized to float32) or a Hugging Face safetensors file
or directory with its config.json (bert, gpt2, llama, t5). The tokenizer is
read from the GGUF file or from the files beside the safetensors
(tokenizer.json, vocab.txt, or GPT-2's encoder.json + vocab.bpe); --tokenizer
points elsewhere. The workdir then serves experiments/generate.py,
experiments/embed.py and fine-tuning like any trained one.
"""

from absl import flags

from configs import base
from experiments import cli
from lm import convert

_SOURCE = flags.DEFINE_string('source', None, 'A GGUF file, or a safetensors '
                              'file or directory.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A new directory to create.',
                               required=True)
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'A directory holding the '
                                 "model's tokenizer, if not beside --source.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  imported = convert.import_checkpoint(
      _SOURCE.value, _WORKDIR.value, base.get_base_config(), _TOKENIZER.value)
  c = imported.model_config
  print(f'Imported {_SOURCE.value} ({imported.source_format}) into '
        f'{_WORKDIR.value}: {c.family} model, {c.num_layers} layers, '
        f'd_model {c.d_model}, {imported.num_params:,} parameters, '
        f'tokenizer of {imported.tokenizer.vocab_size:,} tokens.')


if __name__ == '__main__':
  cli.run(main)
