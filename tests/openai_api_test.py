"""The API's own checks of a request, without a server or a model: token
ids, seeds and chat templates each asked of one owner (tests/serve_test.py
drives the real server)."""

import asyncio
import json
import time
import types

import jax
import pytest

from lm.data import tokenizers
from lm.errors import UsageError
from lm.infer import openai_api
from lm.infer import sampling
from lm.infer.api_fields import ApiError


def _server(tokenizer, vocab_size=300):
  engine = types.SimpleNamespace(
      config=types.SimpleNamespace(vocab_size=vocab_size),
      tokenizer=tokenizer, context=64)
  return openai_api.Server(engine, 'tiny')


def _refusal(coroutine) -> ApiError:
  with pytest.raises(ApiError) as refused:
    asyncio.run(coroutine)
  assert refused.value.status == 400
  return refused.value


def test_token_ids_outside_the_vocabulary_are_refused_alike():
  tokenizer = tokenizers.ByteTokenizer()
  server = _server(tokenizer, vocab_size=300)
  hi = tokenizer.encode('Hi')
  body = asyncio.run(server._detokenize({'tokens': hi}))  # pylint: disable=protected-access
  assert json.loads(body.body) == {'prompt': 'Hi'}
  for ids in ([hi[0], 300], [True], [-1], 'Hi'):
    assert _refusal(server._detokenize({'tokens': ids})).param == 'tokens'  # pylint: disable=protected-access
    if isinstance(ids, list):
      with pytest.raises(ApiError, match=r'token ids in \[0, 300\)'):
        server._prompts({'prompt': [ids]})  # pylint: disable=protected-access
  assert server._prompts({'prompt': [hi]}) == (['Hi'], [hi])  # pylint: disable=protected-access


def test_seeds_are_checked_by_the_sampler_s_own_range():
  server = _server(tokenizers.ByteTokenizer())
  low, high = sampling.SEEDS
  for seed in (low, 0, high):
    assert server._settings({'seed': seed}, [[1]])['seed'] == seed  # pylint: disable=protected-access
    jax.random.PRNGKey(seed)  # What generate makes of it.
  for seed in (low - 1, high + 1):
    with pytest.raises(ApiError, match='seed'):
      server._settings({'seed': seed}, [[1]])  # pylint: disable=protected-access
    assert not sampling.valid_seed(seed)


def test_a_model_without_a_chat_template_answers_with_the_api_s_words():
  tokenizer = tokenizers.ByteTokenizer()
  assert tokenizers.chat_template(tokenizer) is None
  server = _server(tokenizer)
  info = json.loads(asyncio.run(server._tokenizer_info({})).body)  # pylint: disable=protected-access
  assert info['chat_template'] is None
  refused = _refusal(server._chat(  # pylint: disable=protected-access
      {'messages': [{'role': 'user', 'content': 'Hi'}]}))
  assert '/v1/completions' in str(refused) and '--chat' not in str(refused)


def _call(app, method, path, body=b'', headers=(), host='127.0.0.1:8000',
          leave=False):
  """(status, headers, JSON answer) of one request through the ASGI app, as
  uvicorn would pass it; `leave`: the client disconnects after its body."""
  messages = [{'type': 'http.request', 'body': body, 'more_body': False}]
  left = asyncio.Event()
  sent = []

  async def receive():
    if messages:
      return messages.pop(0)
    if leave:
      left.set()
      return {'type': 'http.disconnect'}
    await asyncio.Event().wait()  # The client stays until answered.

  async def send(message):
    sent.append(message)

  scope = {'type': 'http', 'asgi': {'version': '3.0'}, 'http_version': '1.1',
           'method': method, 'scheme': 'http', 'path': path,
           'raw_path': path.encode(), 'query_string': b'', 'root_path': '',
           'client': ('127.0.0.1', 5000), 'server': ('127.0.0.1', 8000),
           'headers': [(k.lower().encode(), v.encode())
                       for k, v in (('host', host), *headers)]}
  asyncio.run(app(scope, receive, send))
  start = sent[0]
  answer = b''.join(m.get('body', b'') for m in sent[1:])
  headers = {k.decode(): v.decode() for k, v in start['headers']}
  json_answer = headers.get('content-type') == 'application/json'
  return start['status'], headers, json.loads(answer) if json_answer else (
      answer.decode())


_JSON = (('content-type', 'application/json'),)


def test_pages_of_other_sites_are_refused():
  """A web page may POST text/plain to a local server without a preflight,
  or reach it through its own name (DNS rebinding): each is refused."""
  app = _server(tokenizers.ByteTokenizer()).app
  body = json.dumps({'prompt': 'Hi'}).encode()
  status, _, answer = _call(app, 'POST', '/tokenize', body, _JSON)
  assert status == 200 and answer['tokens']
  for host in ('localhost:8000', '[::1]:8000', '127.0.0.1'):
    assert _call(app, 'POST', '/tokenize', body, _JSON, host)[0] == 200
  # The server's own page (same origin) may call it.
  assert _call(app, 'POST', '/tokenize', body,
               _JSON + (('origin', 'http://127.0.0.1:8000'),))[0] == 200
  refused = [
      _call(app, 'POST', '/tokenize', body, (('content-type', 'text/plain'),)),
      _call(app, 'POST', '/tokenize', body, ()),
      _call(app, 'POST', '/tokenize', body, _JSON, 'evil.example:8000'),
      _call(app, 'GET', '/health', b'', (), 'evil.example'),
      _call(app, 'GET', '/v1/models', b'', (), 'user@127.0.0.1:8000'),
      _call(app, 'POST', '/tokenize', body,
            _JSON + (('origin', 'https://evil.example'),)),
      _call(app, 'POST', '/tokenize', body, _JSON + (('origin', 'null'),)),
      _call(app, 'OPTIONS', '/tokenize', b'',
            (('origin', 'https://evil.example'),
             ('access-control-request-method', 'POST')))]
  assert [status for status, _, _ in refused] == [415, 415] + [403] * 6
  for _, headers, answer in refused:
    assert headers['content-type'] == 'application/json'
    assert 'access-control-allow-origin' not in headers
  assert 'text/plain' in refused[0][2]['error']['message']
  assert '--allowed_hosts' in refused[2][2]['error']['message']
  assert '--cors_origins' in refused[5][2]['error']['message']


def test_named_hosts_and_origins_are_served():
  engine = _server(tokenizers.ByteTokenizer()).engine
  app = openai_api.Server(engine, 'tiny', host='0.0.0.0').app
  # On every interface the names are unknown: any Host is answered ...
  assert _call(app, 'GET', '/v1/models', host='10.0.0.5:8000')[0] == 200
  app = openai_api.Server(engine, 'tiny', host='0.0.0.0',
                          allowed_hosts=['lm.lan'],
                          cors_origins=['https://notebook.example']).app
  # ... unless they are named.
  assert _call(app, 'GET', '/v1/models', host='lm.lan:8000')[0] == 200
  assert _call(app, 'GET', '/v1/models', host='10.0.0.5:8000')[0] == 403
  page = (('origin', 'https://notebook.example'),)
  status, headers, _ = _call(app, 'GET', '/v1/models', b'', page, 'lm.lan')
  assert status == 200
  assert headers['access-control-allow-origin'] == 'https://notebook.example'
  status, headers, _ = _call(app, 'OPTIONS', '/v1/models', b'', page + (
      ('access-control-request-method', 'POST'),), 'lm.lan')
  assert status == 200 and 'POST' in headers['access-control-allow-methods']


def test_fields_that_change_a_request_s_meaning_are_refused():
  app = _server(tokenizers.ByteTokenizer()).app
  for name, value in (('response_format', {'type': 'json_object'}),
                      ('tools', [{'type': 'function'}]),
                      ('tool_choice', 'auto'), ('logit_bias', {'1': 5}),
                      ('best_of', 3)):
    status, _, answer = _call(app, 'POST', '/tokenize', json.dumps(
        {'prompt': 'Hi', name: value}).encode(), _JSON)
    assert status == 400 and answer['error']['param'] == name, answer
  # Their neutral values change nothing and are answered.
  status, _, _ = _call(app, 'POST', '/tokenize', json.dumps(
      {'prompt': 'Hi', 'response_format': {'type': 'text'}, 'tools': []}
  ).encode(), _JSON)
  assert status == 200
  # JSON integers past Python's digit limit are a 400, not a 500.
  status, _, answer = _call(app, 'POST', '/tokenize',
                            b'{"prompt": "a", "x": ' + b'9' * 5000 + b'}',
                            _JSON)
  assert status == 400 and 'not JSON' in answer['error']['message']


def test_a_request_whose_client_leaves_is_cancelled():
  """Scoring (echo with logprobs) stops when its client goes away: the
  forward passes left are not run."""
  tokenizer = tokenizers.ByteTokenizer()
  server = _server(tokenizer)
  scored = []

  def score(tokens):
    scored.append(tokens)
    time.sleep(0.2)  # A forward pass.
    return [None] + [-1.0] * (len(tokens) - 1), [0] * len(tokens), [
        -1.0] * len(tokens)

  server.engine.score = score
  body = json.dumps({'prompt': ['a b c'] * 20, 'max_tokens': 0,
                     'echo': True, 'logprobs': 0}).encode()
  start = time.perf_counter()
  status, _, answer = _call(server.app, 'POST', '/v1/completions', body,
                            _JSON, leave=True)
  assert status == 400 and 'went away' in answer['error']['message']
  assert time.perf_counter() - start < 1 and len(scored) <= 2
  time.sleep(0.3)
  assert len(scored) <= 2  # Nothing more after the answer.
  # A client that stays gets every prompt scored.
  scored.clear()
  status, _, answer = _call(server.app, 'POST', '/v1/completions', json.dumps(
      {'prompt': ['a b', 'c'], 'max_tokens': 0, 'echo': True,
       'logprobs': 0}).encode(), _JSON)
  assert status == 200 and len(answer['choices']) == 2 and len(scored) == 2


def test_a_temperature_too_small_to_sample_at_is_refused_alike():
  """1e-38 is subnormal in float32 (flushed to zero on a CPU): once it gave
  an empty text where 1e-30 gave the answer."""
  server = _server(tokenizers.ByteTokenizer())
  for temperature in (0, sampling.MIN_TEMPERATURE, 0.7):
    sampling.SamplingConfig(temperature=temperature).validate()
    assert server._settings({'temperature': temperature}, [[1]])[  # pylint: disable=protected-access
        'temperature'] == temperature
  for temperature in (1e-38, 1e-30):
    with pytest.raises(UsageError, match='give 0 for greedy'):
      sampling.SamplingConfig(temperature=temperature).validate()
    refused = _refusal(_settings_coro(server, temperature))
    assert refused.param == 'temperature' and 'give 0' in str(refused)


async def _settings_coro(server, temperature):
  return server._settings({'temperature': temperature}, [[1]])  # pylint: disable=protected-access
