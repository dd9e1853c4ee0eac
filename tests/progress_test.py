"""The live progress line: in a terminal it rewrites itself and keeps out of
the log lines' way; where output is not seen live there is none. (In a
notebook: colabs_test runs quickstart.ipynb, which shows one.)"""

import io
import re
import time

import pytest

from lm import progress
from lm.perf import flops
from lm.train import loop


class FakeTerminal(io.StringIO):

  def isatty(self):
    return True


class Shown:

  def __init__(self):
    self.texts = []

  def show(self, text):
    self.texts.append(text)


def test_a_pipe_gets_no_line_and_a_terminal_gets_one():
  assert progress.for_output(io.StringIO()) is None
  assert isinstance(progress.for_output(FakeTerminal()), progress.TerminalLine)


def test_the_line_reports_rates_from_finished_steps():
  line = Shown()
  tracker = progress.Tracker(line, num_steps=100, tokens_per_step=1000,
                             flops_per_token=2e6,
                             peak=flops.Peak(1e12, measured=False),
                             interval_s=0.0)
  tracker.finished(10, 2.5)
  assert line.texts[-1] == 'step 10/100 | loss 2.5000'  # No rate from one.
  time.sleep(0.2)
  tracker.finished(20, 2.25)
  match = re.fullmatch(r'step 20/100 \| loss 2\.2500 \| ([\d,]+) tokens/s \| '
                       r'MFU ([\d.]+)% \| ETA (\d+)m(\d\d)s', line.texts[-1])
  assert match, line.texts[-1]
  tokens_per_s = float(match[1].replace(',', ''))
  assert 10 * 1000 / 0.5 < tokens_per_s <= 10 * 1000 / 0.2  # 10 steps/>=0.2 s
  assert float(match[2]) == round(tokens_per_s * 2e6 / 1e12 * 100, 1)
  eta_s = int(match[3]) * 60 + int(match[4])
  assert abs(eta_s - 80 * 1000 / tokens_per_s) <= 1  # 80 steps to go
  tracker.pause()  # After an evaluation: the next rate starts afresh.
  tracker.finished(21, 2.0)
  assert line.texts[-1] == 'step 21/100 | loss 2.0000'


@pytest.mark.slow
def test_a_training_run_draws_the_line_between_its_log_lines(tiny, tmp_path):
  terminal = FakeTerminal()
  lines = []

  def log(line):
    terminal.write(line + '\n')
    lines.append(line)

  loop.train_and_evaluate(tiny, str(tmp_path), log=log,
                           progress=progress.TerminalLine(terminal))
  out = terminal.getvalue()
  # Drawn in place (a carriage return, no newline) at least once ...
  drawn = re.findall(r'\r(step \d+/20 \| loss [\d.]+[^\r\n]*?) *(?=\r)', out)
  assert drawn, out
  # ... and wiped before each log line, which starts a clean line: what
  # a terminal shows is the log lines alone.
  screen = []
  for row in out.split('\n'):
    screen.append(row.split('\r')[-1])
  assert screen[:-1] == lines and screen[-1] == ''
