r"""lm's OpenAI server against llama.cpp's, driven by the same client script.

  python -m benchmarks.serve_benchmark \
      --lm=fp32=workdirs/smollm2,int8=workdirs/smollm2_int8 \
      --llama_cpp_python=/path/to/venv/bin/python \
      [--gguf=$(python -m experiments.weights smollm2)] \
      [--clients=1,4,16 --max_tokens=128 --plot=docs/serving.png]

Starts each server in turn on a free localhost port: `experiments.serve`
on every --lm workdir, and `llama_cpp.server` (from a Python that has
`llama-cpp-python[server]`) on --gguf with --threads threads (requests
queued, not interrupted). Compilation
(lm's --warm_up) and a first request come before any timing. Then at each
number of --clients (threads of the `openai` client, each sending
--requests_per_client greedy, streamed requests of --max_tokens new tokens,
benchmarks/http_load.py) it measures aggregate tokens/s and the median
and 95th percentile time to first token. Prints a JSON line per server and
client count, then a summary of the ratios the serving issue asks about;
--plot draws both measures against the number of clients.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from absl import flags

from benchmarks import http_load
from experiments import cli
from lm.convert import packaged
from lm.io import paths

_LM = flags.DEFINE_list('lm', [], 'NAME=WORKDIR pairs: lm workdirs to '
                        'serve, e.g. fp32=workdirs/smollm2.')
_LLAMA = flags.DEFINE_string('llama_cpp_python', None, 'A Python with '
                             'llama-cpp-python[server]; unset: lm only.')
_GGUF = flags.DEFINE_string('gguf', None, 'The GGUF llama.cpp serves '
                            '(default: SmolLM2-135M-Instruct from PyPI).')
_CLIENTS = flags.DEFINE_list('clients', ['1', '4', '16'], 'Numbers of '
                             'concurrent clients.')
_REQUESTS = flags.DEFINE_integer('requests_per_client', 2, 'Requests each '
                                 'client sends, one after another.',
                                 lower_bound=1)
_MAX_TOKENS = flags.DEFINE_integer('max_tokens', 128, 'New tokens per '
                                   'request.', lower_bound=1)
_SLOTS = flags.DEFINE_integer('slots', 16, "lm's decoding slots.",
                              lower_bound=1)
_CONTEXT = flags.DEFINE_integer('context', 256, 'Tokens per request, '
                                'prompt + completion, on both servers.',
                                lower_bound=16)
_THREADS = flags.DEFINE_integer('threads', os.cpu_count(), "llama.cpp's "
                                'threads.', lower_bound=1)
_PLOT = flags.DEFINE_string('plot', None, 'A .png to draw the results in.')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _model_id(url: str, process, log: str, deadline: float) -> str:
  """The served model's id, once the server answers."""
  while True:
    try:
      with urllib.request.urlopen(url + '/v1/models', timeout=10) as answer:
        return json.loads(answer.read())['data'][0]['id']
    except (urllib.error.URLError, ConnectionError, TimeoutError):
      if process.poll() is not None or time.time() > deadline:
        with open(log, encoding='utf-8', errors='replace') as f:
          tail = f.read()[-2000:]
        cli.fail(f'the server did not start ({log}):\n{tail}')
      time.sleep(1)


def _serve(name, command, folder):
  """Starts a server; (its URL, model id, process)."""
  port = _free_port()
  log = os.path.join(folder, f'{name}.log')
  with open(log, 'w', encoding='utf-8') as out:
    process = subprocess.Popen(
        command(port), stdout=out, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=os.getcwd()))
  url = f'http://127.0.0.1:{port}'
  return url, _model_id(url, process, log, time.time() + 1800), process


def _servers():
  """(name, command(port)) of every server to measure."""
  context = _CONTEXT.value
  servers = []
  for item in _LM.value:
    name, _, workdir = item.partition('=')
    if not (name and workdir):
      cli.fail(f'--lm={item!r}: give NAME=WORKDIR, e.g. fp32=workdirs/x')
    paths.existing_directory(workdir)
    servers.append((f'lm_{name}', lambda port, w=workdir: [
        sys.executable, '-m', 'experiments.serve', f'--workdir={w}',
        f'--port={port}', f'--slots={_SLOTS.value}', f'--context={context}',
        f'--warm_up={context}']))
  if _LLAMA.value:
    gguf = paths.regular_file(_GGUF.value or packaged.path('smollm2'),
                              'GGUF', 1 << 40)
    servers.append(('llama_cpp', lambda port: [
        _LLAMA.value, '-m', 'llama_cpp.server', '--model', gguf,
        '--host', '127.0.0.1', '--port', str(port), '--n_ctx', str(context),
        '--n_threads', str(_THREADS.value), '--verbose', 'False',
        # By default a new request cuts the streaming one short; queue
        # them instead, so every request gets its tokens.
        '--interrupt_requests', 'False']))
  if not servers:
    cli.fail('nothing to measure: give --lm and/or --llama_cpp_python')
  return servers


def _summary(rows):
  """The ratios the serving goals name, from this run's rows."""
  speed = {(r['server'], r['clients']): r['tokens_per_second'] for r in rows}
  most, fewest = max(r['clients'] for r in rows), min(
      r['clients'] for r in rows)
  summary = {}
  for server in sorted({r['server'] for r in rows}):
    if (server, most) in speed and (server, fewest) in speed:
      summary[f'{server}_{most}_vs_{fewest}_clients'] = round(
          speed[server, most] / speed[server, fewest], 2)
    if server != 'llama_cpp' and ('llama_cpp', most) in speed:
      summary[f'{server}_vs_llama_cpp_at_{most}_clients'] = round(
          speed[server, most] / speed['llama_cpp', most], 2)
  return summary


def _plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4))
  for server in sorted({r['server'] for r in rows}):
    mine = [r for r in rows if r['server'] == server]
    clients = [r['clients'] for r in mine]
    left.plot(clients, [r['tokens_per_second'] for r in mine], 'o-',
              label=server)
    right.plot(clients, [r['ttft_median_s'] for r in mine], 'o-',
               label=server)
  for axis, label in ((left, 'aggregate tokens/s'),
                      (right, 'median time to first token (s)')):
    axis.set_xscale('log', base=2)
    axis.set_xticks(clients, [str(c) for c in clients])
    axis.set_xlabel('concurrent clients')
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
  left.legend()
  figure.suptitle(f'greedy, {_MAX_TOKENS.value} new tokens per request')
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  try:
    clients = [int(c) for c in _CLIENTS.value]
  except ValueError:
    cli.fail(f'--clients={",".join(_CLIENTS.value)} must be whole numbers')
  if not clients or min(clients) < 1 or max(clients) > 256:
    cli.fail('--clients must list numbers from 1 to 256')
  if _PLOT.value is not None and not _PLOT.value.endswith('.png'):
    cli.fail(f'--plot={_PLOT.value} must name a .png file')
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for name, command in _servers():
      url, model, process = _serve(name, command, folder)
      try:
        http_load.run(url + '/v1', model, 1, 1, 8)  # Warm: first request.
        for count in clients:
          row = {'server': name, **http_load.run(
              url + '/v1', model, count, _REQUESTS.value, _MAX_TOKENS.value)}
          print(json.dumps(row), flush=True)
          rows.append(row)
      finally:
        process.send_signal(signal.SIGTERM)
        try:
          process.wait(timeout=60)
        except subprocess.TimeoutExpired:
          process.kill()
  print(json.dumps({'summary': _summary(rows)}), flush=True)
  if _PLOT.value:
    _plot(rows, _PLOT.value)


if __name__ == '__main__':
  cli.run(main)
