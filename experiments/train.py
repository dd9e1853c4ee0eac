r"""Trains a model from a config; resumes from --workdir if it has checkpoints.

  python -m experiments.train --config=configs/default.py \
      --workdir=workdirs/default [--config.train.num_steps=2000]

Prints one line per log step, evaluates on the validation split, saves
orbax checkpoints and TensorBoard files in --workdir, prints samples, and
ends with the final validation metrics (val_bits_per_byte=...). With
--evaluate=SPLIT it then scores the model on that split as
experiments/evaluate.py does (generating text for text-to-text tasks).
"""

import os

from absl import flags
from ml_collections import config_flags
import tensorboardX

from configs import base
from experiments import cli
from lm import checkpoint
from lm import decode
from lm import evaluation
from lm import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/default.py[:preset].')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, logs and samples go.', required=True)
_EVALUATE = flags.DEFINE_string(
    'evaluate', '', "After training, evaluate on this split ('validation' or "
    "'test') as experiments/evaluate.py does.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  config = cli.get_config(_CONFIG)
  workdir = _WORKDIR.value
  print(config, flush=True)
  final = train.train_and_evaluate(
      config, workdir, log=lambda line: print(line, flush=True))
  # Only causal language models continue free text.
  if config.data.objective == 'causal':
    for prompt, text in sample(config, workdir):
      print(f'--- sample ---\n{prompt}{text}', flush=True)
  print('final: ' + ' '.join(f'val_{k}={v:.4f}' for k, v in final.items()),
        flush=True)
  if _EVALUATE.value:
    result = evaluation.evaluate_workdir(workdir, _EVALUATE.value, {},
                                         base.get_base_config())
    print(evaluation.markdown_table(result))
    print(f'Wrote {result["path"]}', flush=True)


def sample(config, workdir):
  """(prompt, continuation) for each of config.sample.prompts."""
  sc = config.sample
  restored = checkpoint.restore(workdir)
  sampling = decode.SamplingConfig(
      max_new_tokens=sc.max_new_tokens, temperature=sc.temperature,
      top_k=sc.top_k, top_p=sc.top_p)
  prompts = list(sc.prompts)
  texts = decode.complete(restored.model_config, restored.params,
                          restored.tokenizer, prompts, sampling, sc.seed)
  with tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard')) as w:
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
      w.add_text(f'samples/{i}', prompt + text, restored.step)
  return list(zip(prompts, texts))


if __name__ == '__main__':
  cli.run(main)
