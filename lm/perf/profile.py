"""A jax.profiler trace of a few training steps (train.profile_steps)."""

import jax


class Profile:
  """A jax.profiler trace of `count` steps from step `start` (after the
  compiling first steps) into `directory`, for TensorBoard's profile tab or
  Perfetto."""

  def __init__(self, directory: str, start: int, count: int):
    self.directory, self.start, self.end = directory, start, start + count
    self.running = False

  def before(self, step: int):
    if step == self.start:
      jax.profiler.start_trace(self.directory)
      self.running = True

  def after(self, step: int, step_metrics, log):
    if self.running and step >= self.end:
      jax.block_until_ready(step_metrics)  # The traced steps have finished.
      self.stop(log)

  def stop(self, log):
    if self.running:
      jax.profiler.stop_trace()
      self.running = False
      log(f'Profile of steps {self.start + 1}-{self.end} written to '
          f'{self.directory}.')
