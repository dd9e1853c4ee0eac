"""Stopping cleanly when the machine is taken away.

Schedulers announce a preemption with SIGTERM (and a person with Ctrl-C,
SIGINT). `Watch` turns the first such signal into a request the training
loop reads between steps; the loop then saves a checkpoint at that step,
writes `preempted.json` into the workdir and raises `Preempted`, and
experiments/train.py exits with code 0, so that the scheduler's retry (or
the same command) resumes from that checkpoint. A second signal acts at
once, as it would without the watch.
"""

import json
import os
import signal
import threading
import time

from lm.errors import UsageError
from lm.io import files
from lm.io import json_files
from lm.io import layout

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The marker is a line of JSON; anything larger is not lm's.
MARKER_BYTES = 1 << 16


class Preempted(Exception):
  """Training stopped on a signal after saving a checkpoint."""

  def __init__(self, step: int, signal_name: str, workdir: str):
    super().__init__(
        f'{signal_name} at step {step}: saved a checkpoint there; run the '
        f'same command to resume from it ({workdir}).')
    self.step = step


class Watch:
  """While active, records the first SIGTERM/SIGINT instead of dying."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __enter__(self):
    # Signal handlers can only be set from the main thread; elsewhere (a
    # notebook's worker thread) signals keep their usual effect.
    if threading.current_thread() is threading.main_thread():
      for number in _SIGNALS:
        self._previous[number] = signal.signal(number, self._handle)
    return self

  def __exit__(self, *exc):
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous.clear()

  def _handle(self, number, frame):
    del frame
    self.signal_name = signal.Signals(number).name
    signal.signal(number, self._previous.pop(number))  # The next one acts.


def write_marker(workdir: str, step: int, signal_name: str) -> None:
  files.write_atomic(os.path.join(workdir, layout.PREEMPTED), json.dumps(
      {'step': step, 'signal': signal_name,
       'time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}))


def take_marker(workdir: str) -> dict | None:
  """The marker a preempted run left (removed now that it resumes)."""
  path = os.path.join(workdir, layout.PREEMPTED)
  if not os.path.lexists(path):
    return None
  try:  # (Bounded: a FIFO or a link to /dev/zero there cannot block.)
    marker = json_files.load(path, 'preemption marker', MARKER_BYTES)
  except UsageError:
    marker = {}  # Unreadable: it still says the run was preempted.
  os.remove(path)
  return marker if isinstance(marker, dict) else {}
