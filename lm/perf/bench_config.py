"""The `bench` section: what benchmarks/benchmark.py times."""

import dataclasses

from lm import sections
from lm.errors import UsageError


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
    for key in ('steps', 'decode_batch', 'prompt_len', 'new_tokens',
                'decode_repeats'):
      if getattr(self, key) < 1:
        raise UsageError(f'bench.{key} must be >= 1, got '
                         f'{getattr(self, key)}')
    if self.warmup_steps < 0:
      raise UsageError(f'bench.warmup_steps must be >= 0, got '
                       f'{self.warmup_steps}')
