"""What every script shares: flag parsing with one-line errors, JAX setup.

A user's mistake -- an unknown config key, a value of the wrong type, a
missing file, a `UsageError` from the library -- ends the script with one
line on stderr ("error: ...") and exit code 2, never a traceback.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections

from lm.errors import UsageError

_ERROR_EXIT = 2


def fail(message: str) -> None:
  """Prints `message` as one line on stderr and exits with code 2."""
  print('error: ' + ' '.join(message.split()), file=sys.stderr)
  sys.exit(_ERROR_EXIT)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports any flag or config error in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of an unknown key.
    fail(f'unknown config key in an override: {e}; configs/base.py lists '
         'every key'.replace('"', ''))
  except (TypeError, ValueError) as e:
    fail(f'bad config override: {e}')


def get_config(flag: flags.FlagHolder) -> ml_collections.ConfigDict:
  """The parsed --config, or one clear error if the file did not load."""
  path = flags.FLAGS[flag.name].config_filename
  if path is None:
    fail(f'--{flag.name} is required, e.g. --{flag.name}=configs/default.py')
  path = path.split(':')[0]  # FILE:preset
  if not os.path.exists(path):
    fail(f'--{flag.name}={path}: no such file')
  config = flag.value
  if not isinstance(config, ml_collections.ConfigDict):
    fail(f'could not load --{flag.name}={path}; run it with python to see '
         'why')
  return config


def setup_jax() -> None:
  """Quiet library logs; the persistent cache makes later runs compile less."""
  import jax  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # orbax and tfds log every file.
  cache_dir = os.environ.get(
      'JAX_COMPILATION_CACHE_DIR',
      os.path.join(os.path.expanduser('~'), '.cache', 'lm', 'jax'))
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def initialize_distributed(coordinator_address: str,
                           num_processes: int | None,
                           process_id: int | None) -> None:
  """jax.distributed.initialize, with one clear error for a bad setup."""
  import jax  # pylint: disable=g-import-not-at-top
  if coordinator_address and (num_processes is None or process_id is None):
    fail('--coordinator_address needs --num_processes and --process_id')
  if num_processes is not None and not (
      num_processes >= 1 and process_id is not None
      and 0 <= process_id < num_processes):
    fail(f'--process_id={process_id} must be in [0, --num_processes='
         f'{num_processes})')
  # CPU processes exchange arrays through gloo (GPUs and TPUs use their own).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address or None, num_processes,
                               process_id)
  except (RuntimeError, ValueError) as e:
    fail(f'could not join the multi-process run: {e}')


def run(main) -> None:
  """app.run(main) with one-line errors for UsageError and bad flags."""

  def guarded(argv):
    try:
      main(argv)
    except UsageError as e:
      fail(str(e))

  app.run(guarded, flags_parser=parse_flags)
