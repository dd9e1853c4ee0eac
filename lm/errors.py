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


def require(extra: str, *modules: str) -> None:
  """Raises UsageError naming the pip extra that installs `modules` where
  one of them is missing: the core (`pip install lm`) has no web server,
  plots or BLEU; `lm[serve]`, `lm[plots]` and `lm[eval]` add them."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  if missing:
    raise UsageError(
        f'{" and ".join(missing)} {"is" if len(missing) == 1 else "are"} not '
        f"installed: lm's {extra!r} extra brings "
        f"{'it' if len(missing) == 1 else 'them'} (pip install -e "
        f"'.[{extra}]', or make setup, which installs every extra)")
