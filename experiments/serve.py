r"""Serves a decoder workdir over the OpenAI API, with continuous batching.

  python -m experiments.serve --workdir=workdirs/smollm2 [--port=8000]
      [--slots=8 --context=2048 --api_key=KEY --host=127.0.0.1
       --allowed_hosts=NAME,... --cors_origins=https://PAGE,...]

Then any OpenAI client talks to it, e.g.
  from openai import OpenAI
  client = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='KEY')
  client.chat.completions.create(model='smollm2', messages=[...])

Endpoints and fields: lm/infer/openai_api.py. Requests share one compiled
decoding step over --slots rows of KV cache (lm/infer/engine.py); a new one
joins between steps. SIGTERM (or Ctrl-C) stops accepting, lets running
requests finish, and exits 0.
"""

import contextlib
import os
import resource
import signal

from absl import flags

from experiments import cli
from lm import restore
from lm.errors import require
from lm.infer import engine as engines

_WORKDIR = flags.DEFINE_string('workdir', None, 'A decoder workdir (trained '
                               'or imported).', required=True)
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on; '
                            '0.0.0.0 serves other machines too.')
_PORT = flags.DEFINE_integer('port', 8000, 'Port to listen on.',
                             lower_bound=0, upper_bound=65535)
_SLOTS = flags.DEFINE_integer('slots', 8, 'Requests decoded together.',
                              lower_bound=1, upper_bound=256)
_CONTEXT = flags.DEFINE_integer(
    'context', 2048, "Tokens per request (prompt + completion), at most the "
    "model's own context; the KV cache holds slots x context.",
    lower_bound=16)
_API_KEY = flags.DEFINE_string('api_key', None, 'If set, requests must '
                               'send "Authorization: Bearer KEY".')
_WARM_UP = flags.DEFINE_integer(
    'warm_up', 0, 'Before serving, compile what requests of up to this many '
    'tokens need (0: compile on first use); with the compilation cache, '
    'later starts reuse it.', lower_bound=0)
_ALLOWED_HOSTS = flags.DEFINE_list(
    'allowed_hosts', [], 'Host names the server answers to besides its '
    "address (and, on loopback, localhost); '*' for any. A web page reached "
    'through any other name (DNS rebinding) is refused.')
_CORS_ORIGINS = flags.DEFINE_list(
    'cors_origins', [], 'Web page origins (https://example.org) whose '
    'scripts may call the server; by default cross-origin requests are '
    'refused.')
_NAME = flags.DEFINE_string('model_name', None, 'The model id clients '
                            'name; default: the workdir folder\'s name.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  if not _HOST.value.strip():
    cli.fail('--host is empty; give an address such as 127.0.0.1')
  # The HTTP stack is lm[serve]'s, not the core's.
  require('serve', 'starlette', 'uvicorn')
  import uvicorn  # pylint: disable=g-import-not-at-top
  from lm.infer import openai_api  # pylint: disable=g-import-not-at-top
  cli.setup_jax()
  restored = restore.workdir(_WORKDIR.value)
  engine = engines.Engine(restored.model_config, restored.params,
                          restored.tokenizer, slots=_SLOTS.value,
                          context=_CONTEXT.value)
  if _WARM_UP.value:
    print(f'Compiled {engine.warm_up(_WARM_UP.value)} programs for requests '
          f'of up to {min(_WARM_UP.value, engine.context)} tokens.',
          flush=True)
  name = _NAME.value or os.path.basename(os.path.normpath(_WORKDIR.value))
  server = openai_api.Server(engine, name, _API_KEY.value, _HOST.value,
                             _ALLOWED_HOSTS.value, _CORS_ORIGINS.value)
  # Each connection holds a file descriptor: the soft limit (often 1,024)
  # goes up to the hard one, so that many idle connections cannot take
  # every descriptor from the clients being served. (Linux refuses an
  # unlimited one; the soft limit then stays.)
  _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  with contextlib.suppress(ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
  print(f'Serving {name} (step {restored.step}, {engine.slots} slots of '
        f'{engine.context} tokens) at http://{_HOST.value}:{_PORT.value}/v1',
        flush=True)
  # uvicorn handles SIGTERM/SIGINT (a graceful stop), then raises the
  # signal again for the handler it found: this one lets main return, 0.
  for stop in (signal.SIGTERM, signal.SIGINT):
    signal.signal(stop, lambda *_: None)
  uvicorn.run(server.app, host=_HOST.value, port=_PORT.value,
              log_level='warning', timeout_graceful_shutdown=60,
              timeout_keep_alive=5)
  print('Stopped.', flush=True)


if __name__ == '__main__':
  cli.run(main)
