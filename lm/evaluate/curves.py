"""Training curves from a workdir's TensorBoard files, and a plot that
compares runs.

`read_events` parses the event files train_and_evaluate writes (TFRecord
frames of `Event` protos, read with tensorboardX's own proto, so neither
TensorFlow nor TensorBoard is needed). A file cut short by a killed run is
read up to its last whole record.
"""

import dataclasses
import glob
import os
import struct

from lm import errors
from lm.errors import UsageError
from lm.io import layout
from lm.io import tensorboardx

event_pb2 = tensorboardx.load().proto.event_pb2

_HEADER = 12  # uint64 length + uint32 CRC of it
_FOOTER = 4  # uint32 CRC of the data


def _records(path: str):
  with open(path, 'rb') as f:
    data = f.read()
  offset = 0
  while offset + _HEADER <= len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    end = offset + _HEADER + length
    if end + _FOOTER > len(data):
      return  # Cut short while being written.
    yield data[offset + _HEADER:end]
    offset = end + _FOOTER


@dataclasses.dataclass
class Events:
  """What a run's TensorBoard files hold, each as {tag: [(step, value)]} in
  step order: scalars, texts (samples/*) and histograms (params/*, as the
  number of values each summarizes)."""

  scalars: dict[str, list[tuple[int, float]]]
  texts: dict[str, list[tuple[int, str]]]
  histograms: dict[str, list[tuple[int, int]]]


def read_events(workdir: str) -> Events:
  """The events of `<workdir>/tensorboard` (a resumed run's later value of
  a step replaces the earlier one)."""
  directory = os.path.join(workdir, layout.TENSORBOARD)
  files = sorted(glob.glob(os.path.join(directory, 'events.out.tfevents.*')))
  if not files:
    raise UsageError(f'{workdir} has no TensorBoard files in {directory}; is '
                     'it a workdir written by experiments/train.py?')
  found = {'scalars': {}, 'texts': {}, 'histograms': {}}
  for path in files:
    for record in _records(path):
      event = event_pb2.Event()
      event.ParseFromString(record)
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        if kind == 'simple_value':
          found['scalars'].setdefault(value.tag, {})[event.step] = (
              value.simple_value)
        elif kind == 'histo':
          found['histograms'].setdefault(value.tag, {})[event.step] = int(
              value.histo.num)
        elif (kind == 'tensor'
              and value.metadata.plugin_data.plugin_name == 'text'):
          # (tensorboardX files text under '<tag>/text_summary'.)
          tag = value.tag.removesuffix('/text_summary')
          found['texts'].setdefault(tag, {})[event.step] = (
              value.tensor.string_val[0].decode('utf-8'))
  return Events(**{kind: {tag: sorted(points.items())
                          for tag, points in tags.items()}
                   for kind, tags in found.items()})


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the run's scalars, in step order."""
  return read_events(workdir).scalars


def plot_runs(workdirs: list[str], names: list[str], metrics: list[str],
              path: str) -> None:
  """One panel per metric (a TensorBoard tag such as 'eval/loss'), one line
  per run, written as a PNG to `path`."""
  if len(names) != len(workdirs):
    raise UsageError(f'{len(names)} names for {len(workdirs)} workdirs')
  runs = [read_scalars(workdir) for workdir in workdirs]
  for metric in metrics:
    if not any(metric in run for run in runs):
      known = sorted(set().union(*runs))
      raise UsageError(f'no run logged {metric!r}; they logged {known}')
  errors.require('plots', 'matplotlib')
  # A Figure of its own, not pyplot's: drawing a file sets no global
  # backend, so a notebook that imports this still shows its plots inline.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5.5 * len(metrics), 4))
  axes = fig.subplots(1, len(metrics), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for name, run in zip(names, runs):
      if metric in run:
        steps, values = zip(*run[metric])
        ax.plot(steps, values, marker='o' if len(steps) < 20 else None,
                label=name)
    ax.set_title(metric)
    ax.set_xlabel('step')
    ax.set_ylabel(metric.split('/')[-1])
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle('Runs compared: ' + ', '.join(names))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
