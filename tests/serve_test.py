"""experiments/serve.py as its users meet it: a real server process, the
`openai` client, streaming, scoring, hostile requests, many clients at
once, a client that leaves, and SIGTERM.

The model is a small GGUF carrying SmolLM2's real tokenizer and chat
template (tests/file_cases.py), imported by lm.
"""

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import openai
import pytest

from configs import base
from lm import convert
from lm import restore
from lm.convert import packaged
from lm.infer import generate
from lm.infer import sampling
from lm.model import registry
from tests import file_cases
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

KEY = 'test-key'
CONTEXT = 128


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  folder = tmp_path_factory.mktemp('serve')
  gguf = str(folder / 'mini.gguf')
  file_cases.write_mini_gguf(packaged.path('smollm2'), gguf)
  workdir = str(folder / 'mini')
  convert.import_checkpoint(gguf, workdir, base.get_base_config())
  port = _free_port()
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.serve', f'--workdir={workdir}',
       f'--port={port}', '--slots=4', f'--context={CONTEXT}',
       f'--api_key={KEY}'], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  url = f'http://127.0.0.1:{port}'
  deadline = time.time() + 180
  while True:
    try:
      with urllib.request.urlopen(url + '/health', timeout=5):
        break
    except (urllib.error.URLError, ConnectionError):
      assert process.poll() is None, process.stderr.read()
      assert time.time() < deadline, 'the server did not start'
      time.sleep(0.5)
  yield {'url': url, 'workdir': workdir, 'process': process,
         'client': openai.OpenAI(base_url=url + '/v1', api_key=KEY,
                                 max_retries=0, timeout=120)}
  if process.poll() is None:
    process.kill()


def _post(url, body, key=KEY, raw=None):
  """(status, JSON answer) of a POST."""
  request = urllib.request.Request(
      url, data=raw if raw is not None else json.dumps(body).encode(),
      headers={'Content-Type': 'application/json',
               **({'Authorization': f'Bearer {key}'} if key else {})})
  try:
    with urllib.request.urlopen(request, timeout=120) as answer:
      return answer.status, json.loads(answer.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _announce_a_huge_body(url, size):
  """(status, JSON answer) to a POST whose headers announce `size` bytes;
  the server must answer before any of them is sent."""
  host, port = url.split('//')[1].split('/')[0].split(':')
  connection = http.client.HTTPConnection(host, int(port), timeout=60)
  connection.putrequest('POST', '/v1/completions')
  for name, value in (('Content-Type', 'application/json'),
                      ('Authorization', f'Bearer {KEY}'),
                      ('Content-Length', str(size))):
    connection.putheader(name, value)
  connection.endheaders()
  answer = connection.getresponse()
  try:
    return answer.status, json.loads(answer.read())
  finally:
    connection.close()


def test_completions_are_what_generate_writes(served):
  client = served['client']
  assert [m.id for m in client.models.list()] == ['mini']
  answer = client.completions.create(model='mini', prompt='The capital of',
                                     max_tokens=12, temperature=0)
  restored = restore.workdir(served['workdir'])
  expected = generate.complete(
      restored.model_config, restored.params, restored.tokenizer,
      ['The capital of'], sampling.SamplingConfig(max_new_tokens=12,
                                                  temperature=0.0))[0]
  assert answer.choices[0].text == expected
  prompt_tokens = len(restored.tokenizer.encode('The capital of'))
  assert answer.usage.prompt_tokens == prompt_tokens
  assert answer.usage.completion_tokens == len(
      restored.tokenizer.encode(expected)) or answer.choices[
          0].finish_reason == 'stop'
  # Streamed, the same text arrives in pieces.
  pieces = [c.choices[0].text for c in client.completions.create(
      model='mini', prompt='The capital of', max_tokens=12, temperature=0,
      stream=True)]
  assert ''.join(pieces) == expected and len(pieces) > 2
  # A seed fixes a sampled completion, whatever else is decoding.
  one, two = (client.completions.create(
      model='mini', prompt='Once', max_tokens=10, temperature=1.0,
      seed=7).choices[0].text
              for _ in range(2))
  assert one == two


def test_echo_scores_the_prompt_with_the_model_log_probabilities(served):
  answer = served['client'].completions.create(
      model='mini', prompt='Paris is the capital of France', max_tokens=0,
      echo=True, logprobs=1)
  logprobs = answer.choices[0].logprobs
  restored = restore.workdir(served['workdir'])
  tokens = restored.tokenizer.encode('Paris is the capital of France')
  model = registry.build_model(restored.model_config)
  expected = np.asarray(jax.nn.log_softmax(model.apply(
      {'params': restored.params}, np.array([tokens])), axis=-1))[0]
  want = [float(expected[t, tokens[t + 1]]) for t in range(len(tokens) - 1)]
  assert logprobs.token_logprobs[0] is None
  np.testing.assert_allclose(logprobs.token_logprobs[1:], want, atol=1e-4)
  assert answer.choices[0].text == 'Paris is the capital of France'
  assert len(logprobs.top_logprobs) == len(tokens)


def test_chat_goes_through_the_chat_template(served):
  client = served['client']
  answer = client.chat.completions.create(
      model='mini', messages=[{'role': 'system', 'content': 'Be brief.'},
                              {'role': 'user', 'content': 'Hi!'}],
      max_tokens=8, temperature=0)
  assert answer.choices[0].message.role == 'assistant'
  assert answer.usage.prompt_tokens > 5
  streamed = ''.join(c.choices[0].delta.content or '' for c in
                     client.chat.completions.create(
                         model='mini', messages=[{'role': 'user',
                                                  'content': 'Hi!'}],
                         max_tokens=8, temperature=0, stream=True))
  plain = client.chat.completions.create(
      model='mini', messages=[{'role': 'user', 'content': 'Hi!'}],
      max_tokens=8, temperature=0).choices[0].message.content
  assert streamed == plain


def test_hostile_requests_get_json_errors_and_the_server_goes_on(served):
  url = served['url'] + '/v1/completions'
  good = {'model': 'mini', 'prompt': 'Hello', 'max_tokens': 4,
          'temperature': 0}
  bad_fields = [
      {'prompt': None}, {'prompt': ''}, {'prompt': 7}, {'prompt': []},
      {'prompt': [[]]}, {'prompt': [1.5]}, {'prompt': [-1]},
      {'prompt': [10**9]}, {'prompt': ['a'] * 65}, {'prompt': {'a': 1}},
      {'prompt': 'x ' * 400}, {'max_tokens': -1}, {'max_tokens': 'many'},
      {'max_tokens': 10**12}, {'max_tokens': True}, {'max_tokens': 1.5},
      {'max_tokens': 0}, {'temperature': -1}, {'temperature': 'hot'},
      {'temperature': 1e309}, {'top_p': 0}, {'top_p': 2}, {'top_k': -3},
      {'top_k': 10**9}, {'seed': 2**70}, {'seed': 'x'}, {'stop': 5},
      {'stop': ['']}, {'stop': ['a'] * 5}, {'stream': 'yes'},
      {'echo': 1}, {'logprobs': 9}, {'n': 2}, {'model': 'gpt-4'},
      {'model': 7}]
  answers = [_post(url, {**good, **change}) for change in bad_fields]
  answers += [
      _post(url, None, raw=b'{"prompt": '), _post(url, None, raw=b'[1, 2]'),
      _post(url, None, raw=b'\xff\xfe'), _post(url, None, raw=b'[' * 100000),
      _announce_a_huge_body(url, 10 << 20),
      _post(url, good, key=None), _post(url, good, key='wrong'),
      _post(served['url'] + '/v1/chat/completions', {'messages': 'hi'}),
      _post(served['url'] + '/v1/chat/completions',
            {'messages': [{'role': 'user', 'content': 5}]}),
      _post(served['url'] + '/v1/chat/completions',
            {'messages': [{'role': 'user', 'content': 'x ' * 400}]})]
  for (status, body), case in zip(answers, bad_fields + ['raw'] * 10):
    assert 400 <= status < 500, (case, status, body)
    assert set(body['error']) >= {'message', 'type'}, (case, body)
  assert answers[len(bad_fields) + 4][0] == 413
  assert answers[len(bad_fields) + 5][0] == 401
  assert answers[bad_fields.index({'model': 'gpt-4'})][0] == 404
  status, body = _post(url, good)
  assert status == 200 and body['usage']['completion_tokens'] >= 1


def test_many_clients_at_once_all_complete_and_a_leaver_frees_its_slot(
    served):
  client = served['client']

  def ask(i):
    return client.completions.create(model='mini', prompt=f'Number {i}:', max_tokens=6,
                                     temperature=0.5, seed=i)

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    answers = list(pool.map(ask, range(32)))
  assert all(a.usage.completion_tokens >= 1 for a in answers)
  # A client reads one chunk of a long stream and hangs up.
  stream = client.completions.create(model='mini', prompt='Once', max_tokens=100,
                                     temperature=1.0, stream=True)
  next(iter(stream))
  stream.close()
  deadline = time.time() + 30
  while True:
    with urllib.request.urlopen(served['url'] + '/health') as answer:
      if json.loads(answer.read())['live'] == 0:
        break
    assert time.time() < deadline, 'the slot was not freed'
    time.sleep(0.2)


def test_the_chat_keeps_history_and_drops_the_oldest_turns(served):
  lines = ['Hello there, who are you?', '/system Answer in one word.',
           'Name a colour of the sky on a clear day.',
           'Name a fruit that is long and yellow.',
           'Name an animal that barks at night.', '/reset', 'Bye!']
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.chat',
       f'--workdir={served["workdir"]}', '--context=110',
       '--max_new_tokens=8', '--temperature=0'], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT), input='\n'.join(lines),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  assert '(new system message' in out and '(the conversation is forgotten)' in out
  assert 'oldest exchange' in out, out


def test_sigterm_lets_running_requests_finish_and_exits_zero(served):
  client = served['client']
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    running = pool.submit(client.completions.create, model='mini', prompt='Once',
                          max_tokens=40, temperature=0)
    time.sleep(1.0)
    served['process'].send_signal(signal.SIGTERM)
    answer = running.result(timeout=120)
  assert answer.usage.completion_tokens >= 1
  assert served['process'].wait(timeout=120) == 0
