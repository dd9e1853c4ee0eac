r"""Evaluates a workdir's latest checkpoint on a split of its task.

  python -m experiments.evaluate --workdir=DIR [--split=test] [--beam_size=4]
      [--max_batches=4 --eval_batch_size=4] [--task=configs/FILE.py[:preset]]

The task is the workdir's own (config.json), or with --task another
config's (its data and evaluate sections, on the workdir's own model and
tokenizer: an imported model scored zero-shot). A classifier reports accuracy,
macro and per-class precision/recall/F1 and the confusion matrix; a
language model reports loss, perplexity, bits per byte and token accuracy;
a text-to-text model also writes text for the split and reports its
dataset's metrics (BLEU/chrF, ROUGE, or exact match/token F1). Writes
DIR/eval/<dataset>_<split>.json and prints a Markdown table.
"""

from absl import flags
from ml_collections import config_flags

from configs import base
from experiments import cli
from lm import progress
from lm.evaluate import score as evaluation

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir with a checkpoint.',
                               required=True)
_SPLIT = flags.DEFINE_string('split', 'validation', "'validation' or 'test'.")
_BEAM_SIZE = flags.DEFINE_integer(
    'beam_size', None, 'Beam size for encoder-decoder models (1: greedy); '
    'default: the config\'s evaluate.beam_size.', lower_bound=1)
_MAX_BATCHES = flags.DEFINE_integer(
    'max_batches', None, 'Score only the first N batches of the split (any '
    'task); default: the config\'s evaluate.max_batches (0: all).',
    lower_bound=0)
_EVAL_BATCH_SIZE = flags.DEFINE_integer(
    'eval_batch_size', None, 'Rows per scored batch; default: the config\'s '
    'data.eval_batch_size.', lower_bound=1)
_MAX_EXAMPLES = flags.DEFINE_integer(
    'max_examples', None, 'Score only the first N examples of the split by '
    'generation; default: the config\'s evaluate.max_examples (0: all).',
    lower_bound=0)
_TASK = config_flags.DEFINE_config_file(
    'task', None, "Score on this config's task (e.g. configs/translation.py:"
    "smollm2) with the workdir's own model and tokenizer; default: the "
    "workdir's own task.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  task = cli.get_config(_TASK) if _TASK.present else None
  result = evaluation.evaluate_workdir(
      _WORKDIR.value, _SPLIT.value,
      {'beam_size': _BEAM_SIZE.value, 'max_examples': _MAX_EXAMPLES.value,
       'max_batches': _MAX_BATCHES.value},
      base.get_base_config(), line=progress.for_output(),
      eval_batch_size=_EVAL_BATCH_SIZE.value, task=task)
  print(evaluation.markdown_table(result))
  print(f'Wrote {result["path"]}')


if __name__ == '__main__':
  cli.run(main)
