r"""Evaluates a workdir's latest checkpoint on a split of its task.

  python -m experiments.evaluate --workdir=DIR [--split=test]

The task is the workdir's own (config.json): a classifier reports accuracy,
macro and per-class precision/recall/F1 and the confusion matrix; a
language model reports loss, perplexity, bits per byte and token accuracy.
Writes DIR/eval/<dataset>_<split>.json and prints a Markdown table.
"""

import json
import os

from absl import flags

from experiments import cli
from lm import checkpoint
from lm import metrics
from lm import models
from lm import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir with a checkpoint.',
                               required=True)
_SPLIT = flags.DEFINE_string('split', 'validation', "'validation' or 'test'.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  workdir, split = _WORKDIR.value, _SPLIT.value
  config = checkpoint.load_config(workdir)
  trainer = train.Trainer(config)
  params, step = checkpoint.load_params(
      workdir, models.abstract_params(trainer.model))
  sums = train.evaluate_sums(trainer.eval_step, params,
                             trainer.eval_batches(split), trainer.token_bytes)
  result = {'workdir': workdir, 'dataset': config.data.name, 'split': split,
            'step': step, 'metrics': metrics.summarize(sums)}
  if 'confusion' in sums:
    report = metrics.report_from_confusion(
        metrics.rint_counts(sums['confusion']), trainer.data.class_names)
    result.update(per_class=report['per_class'],
                  confusion_matrix=report['confusion_matrix'])
  os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
  path = os.path.join(workdir, 'eval', f'{config.data.name}_{split}.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(path + '.tmp', path)
  print(f'| dataset | split | step | {" | ".join(result["metrics"])} |')
  print('| --- ' * (3 + len(result['metrics'])) + '|')
  print(f'| {config.data.name} | {split} | {step} | ' + ' | '.join(
      f'{v:.4f}' for v in result['metrics'].values()) + ' |')
  for name, row in result.get('per_class', {}).items():
    print(f'class {name}: precision {row["precision"]:.4f} recall '
          f'{row["recall"]:.4f} f1 {row["f1"]:.4f} support {row["support"]}')
  print(f'Wrote {path}')


if __name__ == '__main__':
  cli.run(main)
