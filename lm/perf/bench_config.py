"""The `bench` section: what benchmarks/benchmark.py times."""

import dataclasses

from lm import sections


@dataclasses.dataclass(frozen=True)
class BenchConfig(sections.Section):
  """benchmarks/benchmark.py: timed train steps after warm-up ones, and
  generation of new_tokens after prompts of prompt_len, decode_batch rows
  (the median of decode_repeats timed calls)."""

  NAME = 'bench'
  steps: int = 10
  warmup_steps: int = 2
  decode_batch: int = 8
  prompt_len: int = 64
  new_tokens: int = 128
  decode_repeats: int = 5

  def validate(self) -> None:
    self.require(('steps', 'decode_batch', 'prompt_len', 'new_tokens',
                  'decode_repeats'), 1)
    self.require(('warmup_steps',), 0, 'none')
