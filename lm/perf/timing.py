"""Wall-clock timing shared by the benchmarks: a median over repeated calls,
or calls of several functions in turn."""

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int,
                   warmup: int = 1) -> float:
  """Median seconds of `repeats` calls of `fn` after `warmup` untimed ones
  (which compile, fill caches and warm up threads). `fn` must wait for its
  own result (block_until_ready) for the time to mean anything."""
  return statistics.median(
      alternating_seconds({'fn': fn}, repeats, warmup)['fn'])


def alternating_seconds(fns: dict[str, Callable[[], object]], rounds: int,
                        warmup: int = 1) -> dict[str, list[float]]:
  """Seconds of each call of every function in `fns`, called in turn for
  `rounds` rounds after `warmup` untimed ones: on a machine whose speed
  drifts, each function meets the same states, so their ratios hold where
  separate runs' would not."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times
