"""The `evaluate` section: how experiments/evaluate.py (lm/evaluate/score.py)
scores a workdir. Apart from score.py, which imports the data stack, so
that a run's config is checked where that stack is not installed."""

import dataclasses

from lm import sections


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(sections.Section):
  """How experiments/evaluate.py scores: beam search for encoder-decoder
  models (beam_size 1 is greedy), greedy for decoders; max_examples > 0
  scores only the split's first examples by generation, max_batches > 0
  only its first batches by loss (every task)."""

  NAME = 'evaluate'
  beam_size: int = 4
  length_penalty: float = 0.6
  batch_size: int = 64  # rows per generation call
  max_examples: int = 0
  max_batches: int = 0

  def validate(self) -> None:
    self.require(('beam_size', 'batch_size'), 1)
    self.require(('max_examples', 'max_batches'), 0, 'all')
