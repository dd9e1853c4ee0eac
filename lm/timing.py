"""Wall-clock timing shared by the benchmarks: a median over repeated calls."""

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int,
                   warmup: int = 1) -> float:
  """Median seconds of `repeats` calls of `fn` after `warmup` untimed ones
  (which compile, fill caches and warm up threads). `fn` must wait for its
  own result (block_until_ready) for the time to mean anything."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
