"""A live progress line for training: one line that rewrites itself in place,
in a terminal (a carriage return) or in a Jupyter/Colab notebook (a display
that updates), and nothing where output goes to a file or a pipe, whose
readers get the log lines alone.

  line = progress.for_output()  # None when nothing is live
  train.train_and_evaluate(config, workdir, log=print, progress=line)
"""

import sys
import time
from typing import TextIO


class TerminalLine:
  """Rewrites one line of a terminal; `clear` makes room for a log line."""

  def __init__(self, stream: TextIO):
    self.stream, self.width = stream, 0

  def show(self, text: str) -> None:
    # Pads over the longer line it replaces.
    self.stream.write('\r' + text.ljust(self.width))
    self.stream.flush()
    self.width = len(text)

  def clear(self) -> None:
    if self.width:
      self.stream.write('\r' + ' ' * self.width + '\r')
      self.stream.flush()
      self.width = 0

  def close(self) -> None:
    self.clear()


class NotebookLine:
  """One output of a notebook cell, updated in place; log lines printed
  meanwhile go below it, and the last state stays visible."""

  def __init__(self):
    from IPython import display  # pylint: disable=g-import-not-at-top
    self.display = display
    self.handle = None

  def show(self, text: str) -> None:
    if self.handle is None:
      self.handle = self.display.display(self.display.Pretty(text),
                                         display_id=True)
    else:
      self.handle.update(self.display.Pretty(text))

  def clear(self) -> None:
    pass  # Log lines go to their own output, below this one.

  def close(self) -> None:
    pass


def _in_notebook() -> bool:
  ipython = sys.modules.get('IPython')
  shell = ipython.get_ipython() if ipython else None
  return shell is not None and hasattr(shell, 'kernel')


def for_output(stream: TextIO | None = None):
  """The line for where `stream` (stdout by default) shows: a notebook's, a
  terminal's, or None when it is not seen live."""
  if _in_notebook():
    return NotebookLine()
  stream = sys.stdout if stream is None else stream
  return TerminalLine(stream) if stream.isatty() else None


class Throughput:
  """Tokens/s and seconds left, from the wall time between two finished
  steps; `pause` restarts the clock after an evaluation or a save."""

  def __init__(self, step: int, tokens_per_step: int, num_steps: int):
    self.step, self.time = step, time.perf_counter()
    self.tokens_per_step, self.num_steps = tokens_per_step, num_steps

  def update(self, step: int) -> tuple[float, float]:
    now = time.perf_counter()
    per_step = (now - self.time) / max(step - self.step, 1)
    self.step, self.time = step, now
    return self.tokens_per_step / per_step, per_step * (self.num_steps - step)

  def pause(self) -> None:
    self.time = time.perf_counter()


class Tracker:
  """What the line says as steps finish: step/total, loss, tokens/s, MFU
  and ETA, redrawn at most every `interval_s` seconds. Rates are measured
  between redraws from steps known to have finished, so they are the
  device's, not how far dispatch has run ahead."""

  def __init__(self, line, num_steps: int, tokens_per_step: int,
               flops_per_token: float, peak, interval_s: float = 0.5):
    """`peak` turns FLOP/s into MFU (lm/perf/flops.py Peak)."""
    self.line, self.num_steps = line, num_steps
    self.tokens_per_step, self.interval_s = tokens_per_step, interval_s
    self.flops_per_token, self.peak = flops_per_token, peak
    self.rate = None  # A Throughput from the last redraw on.

  def due(self) -> bool:
    return (self.rate is None
            or time.perf_counter() - self.rate.time >= self.interval_s)

  def finished(self, step: int, loss: float) -> None:
    """`step` has finished with this loss (call when `due`)."""
    text = f'step {step}/{self.num_steps} | loss {loss:.4f}'
    if self.rate is None or step <= self.rate.step:  # Rates need two points.
      self.rate = Throughput(step, self.tokens_per_step, self.num_steps)
    else:
      tokens_per_s, eta_s = self.rate.update(step)
      mfu = self.peak.mfu(tokens_per_s * self.flops_per_token)
      text += (f' | {tokens_per_s:,.0f} tokens/s | MFU {mfu:.1%} | '
               f'ETA {format_seconds(eta_s)}')
    self.line.show(text)

  def pause(self) -> None:
    """After an evaluation or a save: the next rate starts afresh."""
    self.rate = None


def format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 60}m{seconds % 60:02d}s'
