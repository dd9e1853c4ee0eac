r"""Builds the data of the lm-eval tasks in evals/lm_eval/ from offline files.

  python -m tools.lm_eval_tasks --output=/tmp/tasks
  cp /tmp/tasks/*.jsonl evals/lm_eval/

Country capitals come from the PyPI package `countryinfo` (installed by
`make setup`), definitions from WordNet 3.0 (`apt-get install
wordnet-base`). The questions and their order are fixed (seed 0), so a
rebuild gives the files the repository ships. Prints one JSON line: the
number of questions per task.
"""

import json

from absl import flags

from experiments import cli
from lm.data import country_qa
from lm.data import wordnet
from lm.evaluate import lm_eval_tasks
from lm.io import outputs
from lm.io import paths

_OUTPUT = flags.DEFINE_string('output', None, 'A new directory for the '
                              'tasks\' .jsonl files.')
_WORDNET = flags.DEFINE_string('wordnet_dir', wordnet.WORDNET_DIR,
                               'WordNet 3.0 data files.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  if _OUTPUT.value is None:
    cli.fail('--output is required: a new directory for the task files')
  paths.new_directory(_OUTPUT.value)
  countryinfo = country_qa.countryinfo_dir()
  wordnet.check_installed(_WORDNET.value)
  with outputs.building(_OUTPUT.value) as staging:
    sizes = lm_eval_tasks.build(staging, countryinfo, _WORDNET.value)
  print(json.dumps({'output': _OUTPUT.value, 'questions': sizes}))


if __name__ == '__main__':
  cli.run(main)
