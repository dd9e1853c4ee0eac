"""Runs scripts' `main` in this process on many argument lists, the way
their command lines would, and reports how each ended.

  python -m tests.fuzz_runner < cases.json

reads {script module: [argument list, ...]} as JSON and prints {script
module: [{argv, code (the exit code), stdout, stderr, crash (a traceback,
or null)}, ...]}; or, given a list of [script module, argument list]
pairs, runs them in that order and prints a list of those results. One process serves hundreds of invocations of every
script, so that tests/fuzz_test.py needs no interpreter start (and no JAX
import) per case. Before each case the script's flags are removed and its
module reloaded, which defines them anew. A case that runs longer than
LM_FUZZ_SECONDS (default 60) is reported as a crash: a malformed input
must be refused before any real work starts.
"""

import contextlib
import importlib
import io
import json
import os
import resource
import signal
import sys
import time
import traceback

from absl import flags

from experiments import cli


class _TooSlow(Exception):
  pass


def _alarm(signum, frame):
  del signum, frame
  raise _TooSlow('still running: the input was not refused before work '
                 'started')


# The folders whose modules are scripts (`python -m PACKAGE.NAME`).
SCRIPT_PACKAGES = ('experiments.', 'benchmarks.', 'tools.')


def _fresh(name: str):
  """The script's module with new flags: reloading defines them again, so
  no state (a config flag's loaded file, say) leaks from the last case."""
  # The scripts' flags and those config_flags adds per override
  # (--config.a.b) go; the libraries' (absl, grain) stay.
  doomed = {flag.name for module, defined in
            flags.FLAGS.flags_by_module_dict().items()
            if module.startswith(SCRIPT_PACKAGES) for flag in defined}
  doomed |= {flag_name for flag_name in flags.FLAGS
             if flag_name.startswith('config.')}
  for flag_name in doomed & set(flags.FLAGS):
    delattr(flags.FLAGS, flag_name)
  module = (importlib.reload(sys.modules[name]) if name in sys.modules
            else importlib.import_module(name))
  flags.FLAGS.unparse_flags()
  return module


def run_case(name: str, argv: list[str]) -> dict:
  module = _fresh(name)
  out, err = io.StringIO(), io.StringIO()
  code, crash = None, None
  start = time.perf_counter()
  signal.alarm(int(os.environ.get('LM_FUZZ_SECONDS', '60')))
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      sys.argv = [name, *argv]
      cli.run(module.main)
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else int(e.code is not None)
  except BaseException:  # pylint: disable=broad-except
    crash = traceback.format_exc()
  finally:
    signal.alarm(0)
  return {'argv': argv, 'code': code, 'stdout': out.getvalue(),
          'stderr': err.getvalue(), 'crash': crash,
          'seconds': time.perf_counter() - start}


def main():
  # LM_FUZZ_MEMORY caps this process's address space in bytes, before JAX
  # starts threads: a case that would take more fails to allocate.
  if os.environ.get('LM_FUZZ_MEMORY'):
    limit = int(os.environ['LM_FUZZ_MEMORY'])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  cases = json.load(sys.stdin)
  signal.signal(signal.SIGALRM, _alarm)
  if isinstance(cases, list):
    results = []
    for name, argv in cases:
      # Which case ran last, should one take the runner down.
      print(name, argv, file=sys.__stderr__, flush=True)
      results.append(run_case(name, argv))
  else:
    results = {name: [run_case(name, argv) for argv in argvs]
               for name, argvs in cases.items()}
  json.dump(results, sys.__stdout__)
  sys.__stdout__.flush()
  # Threads a case left running (a data pipeline's prefetchers) must not
  # keep the runner from ending.
  os._exit(0)


if __name__ == '__main__':
  main()
