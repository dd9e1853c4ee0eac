"""experiments/serve.py as its users meet it: a real server process, the
`openai` client, streaming, scoring, hostile requests, many clients at
once, a client that leaves, and SIGTERM.

The model is a small GGUF carrying SmolLM2's real tokenizer and chat
template (tests/file_cases.py), imported by lm.
"""

import concurrent.futures
import glob
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import openai
import pytest

from benchmarks import http_load
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
       f'--port={port}', '--slots=16', f'--context={CONTEXT}',
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
  yield {'url': url, 'workdir': workdir, 'process': process, 'gguf': gguf,
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
  """(status, body, content type) of a POST whose headers announce `size`
  bytes: the server must answer before any of them is sent."""
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
    return answer.status, answer.read(), answer.getheader('content-type')
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


def test_greedy_text_among_fifteen_others_is_what_generate_writes(served):
  """16 prompts of different lengths at once: each answer equals
  `generate` on that prompt alone."""
  prompts = [f'Item {i}: ' + 'and so on ' * (i % 5) for i in range(16)]
  restored = restore.workdir(served['workdir'])
  alone = [generate.complete(
      restored.model_config, restored.params, restored.tokenizer, [p],
      sampling.SamplingConfig(max_new_tokens=10, temperature=0.0))[0]
           for p in prompts[:3]]
  client = served['client']
  barrier = threading.Barrier(16)

  def ask(prompt):
    barrier.wait()
    return client.completions.create(model='mini', prompt=prompt,
                                     max_tokens=10, temperature=0).choices[
                                         0].text

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    together = list(pool.map(ask, prompts))
  batch = generate.complete(
      restored.model_config, restored.params, restored.tokenizer, prompts,
      sampling.SamplingConfig(max_new_tokens=10, temperature=0.0))
  assert together[:3] == alone
  assert together == batch


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
  # Multi-turn: the earlier exchange is part of the prompt.
  turns = [{'role': 'user', 'content': 'Hi!'},
           {'role': 'assistant', 'content': plain},
           {'role': 'user', 'content': 'Say it again.'}]
  second = client.chat.completions.create(model='mini', messages=turns,
                                          max_tokens=8, temperature=0)
  restored = restore.workdir(served['workdir'])
  assert second.usage.prompt_tokens == len(restored.tokenizer.encode(
      restored.tokenizer.apply_chat_template(turns)))


# Each value is refused for its field (the context is 128 tokens).
_BAD_VALUES = {
    'prompt': [None, '', 7, [], [[]], [1.5], [-1], [10**9], ['a'] * 65,
               {'a': 1}, 'x ' * 400, True, [True], [[1, 'a']], ['a', 5],
               [[1], 'a', None], [2**70], [[-5]]],
    'max_tokens': [-1, 'many', 10**12, True, 1.5, [], {}, -10**30, 200],
    'temperature': [-1, 'hot', 1e309, 3, [], True, -1e-9],
    'top_p': [0, 2, -0.5, 'x', [], 1e309],
    'top_k': [-3, 10**9, 1.5, 'x', [1]],
    'seed': [2**70, 'x', 1.5, -2**64, [1]],
    'stop': [5, [''], ['a'] * 5, [5], {'a': 1}, [None], ['ok', 7]],
    'stream': ['yes', 1, [], {}],
    'echo': [1, 'true', []],
    'logprobs': [9, -1, 'x', 1.5, True],
    'n': [2, 0, 'x', -1],
    'model': ['gpt-4', 7, [], '', 'mini ']}


def _hostile_completions():
  """Single bad fields, then random pairs of them: one refusal each."""
  single = [{name: value} for name, values in _BAD_VALUES.items()
            for value in values]
  rng = np.random.default_rng(0)
  pairs = []
  while len(pairs) < 100:
    one, two = rng.choice(len(single), 2, replace=False)
    if set(single[one]) != set(single[two]):
      pairs.append({**single[one], **single[two]})
  return single + pairs


def _raw(url, method, path, data=None, key=KEY, headers=()):
  """(status, body bytes, content type) of any request."""
  host, port = url.split('//')[1].split(':')
  connection = http.client.HTTPConnection(host, int(port), timeout=60)
  try:
    connection.request(method, path, body=data, headers={
        'Content-Type': 'application/json', **dict(headers),
        **({'Authorization': f'Bearer {key}'} if key else {})})
    answer = connection.getresponse()
    return answer.status, answer.read(), answer.getheader('content-type')
  finally:
    connection.close()


def test_hostile_requests_get_json_errors_and_the_server_goes_on(served):
  url = served['url']
  good = {'model': 'mini', 'prompt': 'Hello', 'max_tokens': 4,
          'temperature': 0}
  cases = [('POST', '/v1/completions', json.dumps({**good, **change}))
           for change in _hostile_completions()]
  cases += [('POST', '/v1/completions', raw) for raw in (
      b'{"prompt": ', b'[1, 2]', b'\xff\xfe', b'[' * 100000, b'', b'null',
      b'"text"', b'123', b'\x00', b'{"prompt": "a\xff"}', b'{"prompt": NaN}',
      b'{"prompt": "\\ud800"}', b'{"prompt": "a", "prompt": [-1]}',
      b'{' * 50000 + b'}' * 50000)]
  chat = '/v1/chat/completions'
  cases += [('POST', chat, json.dumps(body)) for body in (
      {'messages': 'hi'}, {'messages': []}, {'messages': [{'role': 'user'}]},
      {'messages': [{'role': 'user', 'content': 5}]},
      {'messages': [{'role': 7, 'content': 'hi'}]},
      {'messages': [{'role': 'user', 'content': 'x ' * 400}]},
      {'messages': [['user', 'hi']]}, {'messages': None},
      {'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 0},
      {'messages': [{'role': 'user', 'content': 'hi'}], 'stream': 'no'},
      {'messages': [{'role': 'user', 'content': 'hi'}], 'model': 'other'},
      {'messages': [{'role': 'user', 'content': 'hi'}], 'temperature': 9})]
  cases += [('POST', '/tokenize', json.dumps(body)) for body in (
      {}, {'prompt': 5}, {'prompt': ['a']}, {'prompt': 'a',
                                             'add_special_tokens': 'yes'})]
  cases += [('POST', '/detokenize', json.dumps(body)) for body in (
      {}, {'tokens': 'abc'}, {'tokens': [-1]}, {'tokens': [10**9]},
      {'tokens': [1.5]}, {'tokens': [True]})]
  cases += [('GET', path, None) for path in (
      '/v1/nothing', '/v2/models', '/v1/completions', '/../etc/passwd',
      '/v1/models/../../x', '/%00')]
  cases += [('DELETE', '/v1/models', None), ('PUT', '/v1/completions', '{}')]
  answers = [_raw(url, method, path, data if data is None or isinstance(
      data, bytes) else data.encode()) for method, path, data in cases]
  body = json.dumps(good).encode()
  # A web page's requests (lm/infer/http_guard.py): a POST that needs no
  # preflight, this address under another site's name, another site's page.
  for headers in ((('Content-Type', 'text/plain'),),
                  (('Host', f'evil.example:{url.rsplit(":", 1)[1]}'),),
                  (('Origin', 'https://evil.example'),)):
    answers.append(_raw(url, 'POST', '/v1/completions', body, KEY, headers))
    cases.append(('POST', 'web page', headers))
  for key, headers in ((None, ()), ('wrong', ()), ('', ()),
                       (KEY[:-1], ()), (None, (('Authorization',
                                                 f'Basic {KEY}'),))):
    answers.append(_raw(url, 'POST', '/v1/completions', body, key, headers))
    cases.append(('POST', 'auth', key))
  answers.append(_announce_a_huge_body(url + '/v1/completions', 10 << 20))
  cases.append(('POST', 'huge', None))
  assert len(answers) >= 200
  for (status, data, kind), case in zip(answers, cases):
    assert 400 <= status < 500, (case, status, data[:300])
    assert kind == 'application/json', (case, kind)
    assert set(json.loads(data)['error']) >= {'message', 'type'}, case
  statuses = [a[0] for a in answers]
  assert statuses[-1] == 413 and statuses[-6:-1] == [401] * 5
  assert statuses[-9:-6] == [415, 403, 403]
  assert 404 in statuses and 405 in statuses
  # A 2 MiB body sent in chunks, with no length announced, is cut off.
  host, port = url.split('//')[1].split(':')
  connection = http.client.HTTPConnection(host, int(port), timeout=60)
  connection.request('POST', '/v1/completions', body=iter([b' ' * 65536] * 32),
                     headers={'Authorization': f'Bearer {KEY}',
                              'Content-Type': 'application/json'},
                     encode_chunked=True)
  assert connection.getresponse().status == 413
  connection.close()
  status, answer = _post(url + '/v1/completions', good)
  assert status == 200 and answer['usage']['completion_tokens'] >= 1


def test_idle_connections_do_not_keep_a_client_from_being_served(served):
  """2,000 connections that never send a byte (each a file descriptor in
  the server) leave room for a client that asks something."""
  host, port = served['url'].split('//')[1].split(':')
  idle = []
  try:
    for _ in range(2000):
      idle.append(socket.create_connection((host, int(port)), timeout=30))
    status, answer = _post(served['url'] + '/v1/completions', {
        'prompt': 'Hello', 'max_tokens': 2, 'temperature': 0})
    assert status == 200 and answer['usage']['completion_tokens'] >= 1
  finally:
    for connection in idle:
      connection.close()


def test_many_clients_at_once_all_complete_and_a_leaver_frees_its_slot(
    served):
  client = served['client']

  def ask(i):
    return client.completions.create(model='mini', prompt=f'Number {i}:', max_tokens=6,
                                     temperature=0.5, seed=i)

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    answers = list(pool.map(ask, range(64)))
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


def test_the_load_client_counts_what_the_server_sends(served):
  """benchmarks/http_load.py, the benchmark's client, on this server."""
  result = http_load.run(served['url'] + '/v1', 'mini', clients=3,
                         requests_per_client=2, max_tokens=5, api_key=KEY)
  assert result['requests'] == 6 and 6 <= result['tokens'] <= 30
  assert result['tokens_per_second'] > 0
  assert 0 < result['ttft_median_s'] <= result['ttft_p95_s'] <= result[
      'seconds']


def _lm_eval(model, model_args, output, env, *extra):
  """Starts `python -m lm_eval` on the tasks shipped in evals/lm_eval."""
  return subprocess.Popen(
      [sys.executable, '-m', 'lm_eval', *extra, '--model', model,
       '--model_args', model_args, '--include_path', 'evals/lm_eval', '--tasks', 'lm_tasks',
       '--limit', '5', '--log_samples', '--output_path', output], cwd=ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lm_eval_samples(output):
  """{(task, doc): (the choices' log-likelihoods, acc)} of one run."""
  samples = {}
  for path in glob.glob(os.path.join(output, '*', 'samples_*.jsonl')):
    task = os.path.basename(path).split('_20')[0]
    with open(path, encoding='utf-8') as f:
      for line in f:
        row = json.loads(line)
        samples[task, row['doc_id']] = (
            [float(r[0][0]) for r in row['resps']], row['acc'])
  return samples


def test_lm_eval_scores_the_served_model_as_transformers_scores_the_gguf(
    served, tmp_path):
  """lm-eval's local-completions model through the server, and its hf
  model reading the same GGUF with transformers, on the shipped tasks."""
  env = dict(os.environ, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1',
             OPENAI_API_KEY=KEY, PYTHONPATH=ROOT)
  runs = {
      'served': _lm_eval('local-completions', f'base_url={served["url"]}'
                         f'/v1/completions,model=mini,auth_token={KEY}',
                         str(tmp_path / 'served'), env),
      'hf': _lm_eval('hf', f'pretrained={os.path.dirname(served["gguf"])},'
                     'gguf_file=mini.gguf,dtype=float32',
                     str(tmp_path / 'hf'), env, '--device', 'cpu')}
  for name, process in runs.items():
    log = process.communicate(timeout=600)[0]
    assert process.returncode == 0, (name, log[-3000:])
  served_samples, hf_samples = (_lm_eval_samples(str(tmp_path / name))
                                for name in runs)
  assert sorted(served_samples) == sorted(hf_samples)
  assert len(served_samples) == 10  # 5 questions of each task.
  for key, (logliks, acc) in served_samples.items():
    np.testing.assert_allclose(logliks, hf_samples[key][0], atol=1e-3,
                               err_msg=str(key))
    assert acc == hf_samples[key][1], key


def test_the_chat_keeps_history_and_drops_the_oldest_turns(served):
  lines = [b'Hello there, who are you?', b'/system Answer in one word.',
           b'Name a colour of the sky on a clear day.', b'\xff\xfe\x00 ?',
           b'Name a fruit that is long and yellow.',
           b'Name an animal that barks at night.', b'/reset', b'Bye!']
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.chat',
       f'--workdir={served["workdir"]}', '--context=110',
       '--max_new_tokens=8', '--temperature=0'], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT), input=b'\n'.join(lines),
      capture_output=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout.decode()
  assert '(new system message' in out and '(the conversation is forgotten)' in out
  assert '(that line is not UTF-8 text' in out
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
