"""The one exception type for a user's mistake.

A bad config value, a missing file or an empty prompt is not a bug: the
scripts catch `UsageError` and print its message as one line, without a
traceback. Its message names the problem and the fix.
"""


class UsageError(ValueError):
  """A mistake in the user's input (config, flags, files, prompts)."""


class DivergedError(UsageError):
  """Training met too many non-finite steps in a row (see
  train.max_nonfinite_steps); the message says what to change."""
