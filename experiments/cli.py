"""What every script shares: flag parsing with one-line errors, JAX setup.

A user's mistake -- an unknown config key, a value of the wrong type, a
missing file, a `UsageError` from the library -- ends the script with one
line on stderr ("error: ...") and exit code 2, never a traceback.
"""

import ast
import os
import sys
import traceback
import warnings

from absl import app
from absl import flags
from absl import logging
import ml_collections

from lm.errors import UsageError
from lm.kernels import allocator
from lm.kernels import platform

_ERROR_EXIT = 2


def fail(message: str) -> None:
  """Prints `message` as one line on stderr and exits with code 2."""
  print('error: ' + ' '.join(message.split()), file=sys.stderr)
  sys.exit(_ERROR_EXIT)


def _check_config_file(argv: list[str]) -> None:
  """A --config file that is missing, not text, not Python, or without
  get_config() gets its own error before ml_collections runs it (whose
  errors would say something else, or come later)."""
  for arg in argv:
    if not arg.startswith('--config='):
      continue
    path = arg[len('--config='):].split(':')[0]
    if not os.path.isfile(path):
      fail(f'--config={path}: no such file'
           + (' (it is a directory)' if os.path.isdir(path) else ''))
    try:
      with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    except UnicodeDecodeError:
      fail(f'--config={path} is not UTF-8 text; give a config .py file such '
           'as configs/default.py')
    except (SyntaxError, ValueError) as e:
      fail(f'--config={path} is not valid Python: {e}')
    if not any(isinstance(node, ast.FunctionDef) and node.name == 'get_config'
               for node in tree.body):
      fail(f'--config={path} defines no get_config(); a config file returns '
           'its ConfigDict from get_config(), as configs/default.py does')


def _without_traceback(message: str) -> str:
  """ml_collections puts the traceback of a failing get_config() into its
  error; its last line (the exception) is what the user needs."""
  head, marker, trace = message.partition('Traceback (most recent call last)')
  if not marker:
    return message
  last = [line for line in trace.splitlines() if line.strip()][-1:]
  return head.strip() + ' ' + ''.join(last).strip()


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports any flag or config error in one line."""
  _check_config_file(argv[1:])
  try:
    remaining = flags.FLAGS(argv)
    _check_text(remaining)
    return remaining
  except flags.Error as e:
    fail(_without_traceback(str(e)))
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of an unknown key.
    fail(f'unknown config key in an override: {e}; configs/base.py lists '
         'every key'.replace('"', ''))
  except (TypeError, ValueError) as e:
    fail(f'bad config override: {e}')
  except Exception as e:  # pylint: disable=broad-except
    # The config file's get_config() runs during parsing; its error is the
    # user's to fix, and is reported like theirs.
    fail(f'the config file failed: {type(e).__name__}: {e}')


def _check_text(remaining: list[str]) -> None:
  """Refuses flag values that are not UTF-8 text: Python hands their bytes
  on as lone surrogates, which no tokenizer or file name takes."""
  for name in flags.FLAGS:
    values = flags.FLAGS[name].value
    for value in values if isinstance(values, list) else [values]:
      if isinstance(value, str) and not _is_text(value):
        fail(f'--{name} is not valid UTF-8 text; give it as UTF-8')
  for value in remaining[1:]:
    if not _is_text(value):
      fail('an argument is not valid UTF-8 text; give it as UTF-8')


def _is_text(value: str) -> bool:
  try:
    value.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def get_config(flag: flags.FlagHolder, check_devices: bool = True
               ) -> ml_collections.ConfigDict:
  """The parsed --config, validated (lm/train/config.py), or one clear
  error. `check_devices=False` leaves JAX's backend alone, for a process
  that joins a multi-process run after reading its config."""
  path = flags.FLAGS[flag.name].config_filename
  if path is None:
    fail(f'--{flag.name} is required, e.g. --{flag.name}=configs/default.py')
  path = path.split(':')[0]  # FILE:preset
  if not os.path.isfile(path):
    fail(f'--{flag.name}={path}: no such file')
  try:
    config = flag.value
  except Exception as e:  # pylint: disable=broad-except
    fail(f'could not load --{flag.name}={path}: {type(e).__name__}: '
         f'{_without_traceback(str(e))}')
  if not isinstance(config, ml_collections.ConfigDict) or not config:
    fail(f'could not load --{flag.name}={path}; run it with python to see '
         'why')
  # Imported here: scripts parse flags before JAX starts.
  from lm.train import config as run_config  # pylint: disable=g-import-not-at-top
  try:
    import jax  # pylint: disable=g-import-not-at-top
    run_config.validate(  # Every section, before any work.
        config, jax.device_count() if check_devices else None)
  except UsageError as e:
    fail(str(e))
  except (KeyError, AttributeError) as e:
    fail(f'--{flag.name}={path} lacks a section or key lm needs ({e}); '
         'build it on configs/base.py as configs/default.py does')
  return config


def setup_jax() -> None:
  """Quiet library logs; the persistent cache makes later runs compile less."""
  import jax  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # orbax and tfds log every file.
  logging.get_absl_handler().addFilter(_no_background_echo)
  if not hasattr(sys.unraisablehook, 'drops_closed_loops'):  # Once.
    sys.unraisablehook = _unraisable_but_closed_loops(sys.unraisablehook)
  # The same failure leaves orbax's unstarted write coroutines behind; Python
  # warns of each when it collects them at exit. lm itself has no coroutines.
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)
  cache_dir = os.environ.get(
      'JAX_COMPILATION_CACHE_DIR',
      os.path.join(os.path.expanduser('~'), '.cache', 'lm', 'jax'))
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def _no_background_echo(record) -> bool:
  """Drops logs of an exception raised in orbax's background threads (with
  their tracebacks; orbax and asyncio log them): the same exception reaches
  the script, where lm/io/checkpoint.py reports it in one line."""
  if not record.exc_info or not record.exc_info[1]:
    return True
  frames = traceback.extract_tb(record.exc_info[2])
  return not (any(f'{os.sep}orbax{os.sep}' in frame.filename
                  for frame in frames)
              # tensorstore's futures carry no Python frames, only the path.
              or '.orbax-checkpoint-tmp' in str(record.exc_info[1]))


def _unraisable_but_closed_loops(previous):
  """When one write of a checkpoint fails, orbax closes its event loop while
  tensorstore's other writes finish; each reports 'Event loop is closed'
  through sys.unraisablehook, dozens of tracebacks that add nothing to the
  save's own error. They are dropped; anything else is reported."""

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_loops = True
  return hook


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
  platform.choose_collectives()
  try:
    jax.distributed.initialize(coordinator_address or None, num_processes,
                               process_id)
  except (RuntimeError, ValueError) as e:
    fail(f'could not join the multi-process run: {e}')


def run(main) -> None:
  """app.run(main) with one-line errors for UsageError and bad flags.

  On the CPU the process first restarts once with a memory allocator that
  keeps freed memory (lm/kernels/allocator.py; LM_ALLOCATOR=system opts
  out): the one place a script chooses it."""
  allocator.restart_with_allocator()

  def guarded(argv):
    try:
      main(argv)
    except UsageError as e:
      fail(str(e))

  app.run(guarded, flags_parser=parse_flags)
