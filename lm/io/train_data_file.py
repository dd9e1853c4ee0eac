"""A workdir's train_data.json: what training read, for the figures that
depend on it once the data is gone (DP-SGD's sampling rate, which scoring
reports, needs the number of train examples; scoring reads no train split).
"""

import json
import os

from lm.errors import UsageError
from lm.io import files
from lm.io import json_files
from lm.io import layout


def encode(dataset: str, count: int) -> str:
  """The file's contents for a run that read `count` train examples of
  `dataset`."""
  return json.dumps({'dataset': dataset, 'train_examples': count}, indent=2)


def save(workdir: str, dataset: str, count: int) -> None:
  files.write_atomic(os.path.join(workdir, layout.TRAIN_DATA),
                     encode(dataset, count))


def train_examples(workdir: str) -> int | None:
  """The train examples the workdir's run read; None where it predates
  this record."""
  path = os.path.join(workdir, layout.TRAIN_DATA)
  if not os.path.lexists(path):
    return None
  record = json_files.load_object(path, 'train data record')
  count = record.get('train_examples')
  if type(count) is not int or count <= 0:  # pylint: disable=unidiomatic-typecheck
    raise UsageError(f'{path} holds no positive integer train_examples; '
                     'the file is damaged: delete it (DP-SGD scores then '
                     'report epsilon as unknown)')
  return count
