"""The OpenAI completions and chat API over an Engine, as an ASGI app.

  GET  /health                 {"status": "ok", "live": N}
  GET  /v1/models              the one model served
  POST /v1/completions         prompt (text, texts, token ids), max_tokens,
                               temperature, top_p, top_k, stop, seed,
                               stream, logprobs, echo
  POST /v1/chat/completions    messages through the model's chat template
  GET  /tokenizer_info         special tokens and chat template
  POST /tokenize, /detokenize  text <-> token ids

`echo` with `logprobs` returns the log-probability of every prompt token
(and of the generated ones, scored with them): what log-likelihood
evaluation asks for. lm-eval's local-completions sends `max_tokens=1`;
`max_tokens=0` scores the prompt alone. The three tokenizer endpoints have
vLLM's shapes, so lm-eval tokenizes with the served model's own tokenizer.
Every answer carries token usage; every refusal is an OpenAI-shaped error
({"error": {"message", "type", "param", "code"}}) with a 4xx status.
Requests from other sites' pages are refused (lm/infer/http_guard.py); a
request whose client leaves is cancelled, scoring included.
"""

import asyncio
import contextlib
import hmac
import itertools
import json
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from lm.data import tokenizers
from lm.errors import UsageError
from lm.infer import engine as engines
from lm.infer import http_guard
from lm.infer import sampling
from lm.infer.api_fields import ApiError
from lm.infer.api_fields import error_response
from lm.infer.api_fields import field
from lm.infer.api_fields import number
from lm.infer.api_fields import read_body

MAX_PROMPTS = 64
MAX_STOPS = 4


class Server:
  """Turns HTTP requests into engine requests."""

  def __init__(self, engine: engines.Engine, model_name: str,
               api_key: str | None = None, host: str = '127.0.0.1',
               allowed_hosts=(), cors_origins=()):
    """`host`: the address served; `allowed_hosts`, `cors_origins`: the
    other Host names and page origins answered (lm/infer/http_guard.py)."""
    self.engine, self.model_name, self.api_key = engine, model_name, api_key
    guarded = self._guarded
    routes = Starlette(routes=[
        Route('/health', self.health),
        Route('/v1/models', guarded(self._models)),
        Route('/v1/completions', guarded(self._completions, body=True),
              methods=['POST']),
        Route('/v1/chat/completions', guarded(self._chat, body=True),
              methods=['POST']),
        Route('/tokenizer_info', guarded(self._tokenizer_info)),
        Route('/tokenize', guarded(self._tokenize, body=True),
              methods=['POST']),
        Route('/detokenize', guarded(self._detokenize, body=True),
              methods=['POST'])],
        exception_handlers={HTTPException: self._http_error},
        lifespan=self._lifespan)
    self.app = http_guard.Guard(routes, host, allowed_hosts, cors_origins)

  @contextlib.asynccontextmanager
  async def _lifespan(self, app):
    del app
    yield
    # Shutting down: what waits is cancelled, what runs finishes.
    await asyncio.to_thread(self.engine.stop)

  async def _http_error(self, request, exc):
    """Unknown paths and wrong methods get the API's error shape too."""
    return error_response(
        exc.status_code, f'{request.method} {request.url.path}: '
        f'{exc.detail}')

  # -- endpoints -------------------------------------------------------------

  async def health(self, request):
    del request
    return JSONResponse({'status': 'ok', 'live': self.engine.busy()})

  def _guarded(self, handler, body=False):
    """An endpoint: checks the key, reads the JSON body where it takes one,
    and answers every failure in the API's error shape."""
    async def endpoint(request):
      try:
        self._authorize(request)
        work = asyncio.ensure_future(
            handler(await read_body(request, self.model_name) if body
            else None))
        left = asyncio.ensure_future(_client_leaves(request))
        await asyncio.wait((work, left), return_when=asyncio.FIRST_COMPLETED)
        left.cancel()
        if not work.done():  # Nobody waits for the answer: stop making it.
          work.cancel()
          return error_response(400, 'the client went away')
        return work.result()
      except ApiError as e:
        return error_response(e.status, str(e), e.param, e.code)
      except UsageError as e:
        return error_response(400, str(e))
      except ClientDisconnect:
        return error_response(400, 'the client went away')
      except Exception as e:  # pylint: disable=broad-except
        # A bug, not the request's fault: said in the API's shape, not as a
        # bare 500 page, and the server goes on.
        return error_response(500, f'{type(e).__name__}: {str(e)[:300]}')
    return endpoint

  def _authorize(self, request):
    if self.api_key and not hmac.compare_digest(
        request.headers.get('authorization', '').encode(),
        f'Bearer {self.api_key}'.encode()):
      raise ApiError(401, 'a valid API key is needed (Authorization: '
                     'Bearer KEY)', code='invalid_api_key')

  async def _models(self, body):
    del body
    return JSONResponse({'object': 'list', 'data': [{
        'id': self.model_name, 'object': 'model', 'created': 0,
        'owned_by': 'lm'}]})

  # -- tokenizer -------------------------------------------------------------

  async def _tokenizer_info(self, body):
    del body
    tokenizer = self.engine.tokenizer
    name = tokenizer.token_name
    return JSONResponse({
        'tokenizer_class': type(tokenizer).__name__,
        'bos_token': name(tokenizer.bos_id),
        'eos_token': name(tokenizer.eos_id),
        'pad_token': name(tokenizer.pad_id),
        'chat_template': tokenizers.chat_template(tokenizer),
        'model_max_length': self.engine.context})

  async def _tokenize(self, body):
    text = field(body, 'prompt', (str,), None, what='text')
    if text is None:
      raise ApiError(400, 'prompt (text) is required', 'prompt')
    # Completions encode prompts without added special tokens; so does this.
    field(body, 'add_special_tokens', (bool,), False)
    ids = self.engine.tokenizer.encode(text)
    return JSONResponse({'tokens': ids, 'count': len(ids),
                         'max_model_len': self.engine.context})

  async def _detokenize(self, body):
    vocab = self.engine.config.vocab_size
    ids = body.get('tokens')
    if not _are_token_ids(ids, vocab):
      raise ApiError(400, f'tokens must be a list of ids in [0, {vocab})',
                     'tokens')
    return JSONResponse({'prompt': self.engine.tokenizer.decode(ids)})

  # -- completions -----------------------------------------------------------

  def _settings(self, body, prompt_tokens):
    """Engine keyword arguments from the request's sampling fields."""
    stop = field(body, 'stop', (str, list), [], what='a string or a list')
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOPS or not all(isinstance(s, str) and s
                                        for s in stop):
      raise ApiError(400, f'stop must be at most {MAX_STOPS} non-empty '
                     'strings', 'stop')
    room = self.engine.context - max(len(p) for p in prompt_tokens)
    settings = {
        'max_tokens': field(body, 'max_tokens', (int,), min(256, room),
                             lambda v: v >= 0, 'an integer >= 0'),
        'temperature': number(body, 'temperature', 1.0, 0.0, 2.0,
                              sampling.temperature_problem),
        'top_p': number(body, 'top_p', 1.0, 1e-9, 1.0),
        'top_k': field(body, 'top_k', (int,), 0, lambda v: v >= 0,
                        'an integer >= 0'),
        'seed': field(body, 'seed', (int,), 0, sampling.valid_seed,
                       f'an integer in [{sampling.SEEDS[0]}, '
                       f'{sampling.SEEDS[1]}]'),
        'stop': tuple(stop)}
    return settings

  def _prompts(self, body) -> tuple[list[str], list[list[int]]]:
    prompt = body.get('prompt')
    if isinstance(prompt, str):
      prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt):
      prompt = [prompt]
    if not (isinstance(prompt, list) and 0 < len(prompt) <= MAX_PROMPTS):
      raise ApiError(400, 'prompt must be a string, a list of at most '
                     f'{MAX_PROMPTS} strings, or token ids', 'prompt')
    texts, tokens = [], []
    vocab = self.engine.config.vocab_size
    for item in prompt:
      if isinstance(item, str):
        ids = self.engine.tokenizer.encode(item)
      elif _are_token_ids(item, vocab):
        ids, item = item, self.engine.tokenizer.decode(item)
      else:
        raise ApiError(400, f'a prompt must be text or token ids in [0, '
                       f'{vocab})', 'prompt')
      if not ids:
        raise ApiError(400, 'a prompt is empty', 'prompt')
      if len(ids) > self.engine.context:
        raise ApiError(400, f'a prompt has {len(ids)} tokens, more than the '
                       f'context of {self.engine.context}', 'prompt')
      texts.append(item)
      tokens.append(ids)
    return texts, tokens

  async def _completions(self, body):
    texts, prompts = self._prompts(body)
    settings = self._settings(body, prompts)
    stream = field(body, 'stream', (bool,), False)
    echo = field(body, 'echo', (bool,), False)
    logprobs = field(body, 'logprobs', (int,), None,
                      lambda v: 0 <= v <= 5, 'an integer in [0, 5]')
    if settings['max_tokens'] == 0 and (not echo or stream):
      raise ApiError(400, 'max_tokens=0 needs echo=true (and no stream): '
                     'it scores the prompt', 'max_tokens')
    requests = []
    if settings['max_tokens']:
      try:
        for p in prompts:
          requests.append(self._request(p, settings))
      except UsageError:
        for r in requests:
          self.engine.cancel(r)
        raise
    created, ident = int(time.time()), f'cmpl-{uuid.uuid4().hex[:24]}'
    head = {'id': ident, 'object': 'text_completion', 'created': created,
            'model': self.model_name}
    if stream:
      def chunk(index, text, reason):
        return {**head, 'choices': [{'index': index, 'text': text,
                                     'logprobs': None,
                                     'finish_reason': reason}]}
      prefix = texts if echo else None
      return self._stream(requests, chunk, prefix)
    if requests:
      results = await self._gather(requests)
    else:  # Scoring alone.
      results = [('', 'length', {'prompt_tokens': len(p),
                                 'completion_tokens': 0,
                                 'total_tokens': len(p)}) for p in prompts]
    choices = []
    for index, (text, reason, _) in enumerate(results):
      choice = {'index': index, 'text': (texts[index] if echo else '') + text,
                'finish_reason': reason, 'logprobs': None}
      if logprobs is not None:
        tokens = prompts[index]
        if requests:  # The generated tokens, EOS too (as vLLM): lm-eval
          # drops the last token of prompt + completion.
          request = requests[index]
          tokens = tokens + request.tokens + (
              [self.engine.tokenizer.eos_id] if request.ended_by_eos else [])
        start = 0 if echo else len(prompts[index])
        # A forward pass: off the event loop, so other clients are served.
        choice['logprobs'] = await asyncio.to_thread(
            self._logprobs, tokens, start, logprobs > 0)
      choices.append(choice)
    return JSONResponse({**head, 'choices': choices,
                         'usage': _total([u for _, _, u in results])})

  def _logprobs(self, tokens, start, top):
    """OpenAI `logprobs` of tokens[start:]: each token's log-probability
    given all before it, and the most likely token there, from one pass
    over the whole sequence (what log-likelihood evaluation reads)."""
    chosen, best, best_logprob = self.engine.score(tokens)
    decode = self.engine.tokenizer.decode
    pieces = [decode([t]) for t in tokens[start:]]
    tops = [None if i == 0 else {decode([best[i - 1]]): best_logprob[i - 1]}
            for i in range(start, len(tokens))]
    offsets = list(itertools.accumulate((len(p) for p in pieces[:-1]),
                                        initial=0))
    return {'tokens': pieces, 'token_logprobs': chosen[start:],
            'top_logprobs': tops if top else None, 'text_offset': offsets}

  # -- chat ------------------------------------------------------------------

  async def _chat(self, body):
    messages = body.get('messages')
    if not (isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get('role'), str)
        and isinstance(m.get('content'), str) for m in messages)):
      raise ApiError(400, 'messages must be a non-empty list of {"role", '
                     '"content"} objects with text content', 'messages')
    if not tokenizers.chat_template(self.engine.tokenizer):
      raise ApiError(400, 'this model has no chat template; use '
                     '/v1/completions')
    # Off the event loop: a slow template (bounded to seconds) delays its
    # own request, not every other one.
    text = await asyncio.to_thread(
        self.engine.tokenizer.apply_chat_template,
        [{'role': m['role'], 'content': m['content']} for m in messages])
    prompt = self.engine.tokenizer.encode(text)
    if len(prompt) >= self.engine.context:
      raise ApiError(400, f'the conversation has {len(prompt)} tokens, more '
                     f'than the context of {self.engine.context}', 'messages')
    settings = self._settings(body, [prompt])
    if settings['max_tokens'] < 1:
      raise ApiError(400, 'max_tokens must be >= 1', 'max_tokens')
    request = self._request(prompt, settings)
    head = {'id': f'chatcmpl-{uuid.uuid4().hex[:24]}',
            'object': 'chat.completion', 'created': int(time.time()),
            'model': self.model_name}
    if field(body, 'stream', (bool,), False):
      def chunk(index, text, reason):
        delta = {'content': text} if text else {}
        return {**head, 'object': 'chat.completion.chunk', 'choices': [
            {'index': index, 'delta': delta, 'finish_reason': reason}]}
      return self._stream([request], chunk, [None], role=True)
    (text, reason, usage), = await self._gather([request])
    return JSONResponse({**head, 'choices': [{
        'index': 0, 'message': {'role': 'assistant', 'content': text},
        'finish_reason': reason}], 'usage': usage})

  # -- talking to the engine -------------------------------------------------

  def _request(self, prompt, settings):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    def emit(*event):
      loop.call_soon_threadsafe(queue.put_nowait, event)

    request = engines.Request(prompt=prompt, emit=emit, **settings)
    request.queue = queue
    self.engine.submit(request)
    return request

  async def _gather(self, requests):
    """(text, finish reason, usage) of each request, once all are done."""
    try:
      return [await self._collect(r) for r in requests]
    finally:
      for r in requests:
        self.engine.cancel(r)  # No-op for a request that has ended.

  @staticmethod
  async def _collect(request):
    pieces = []
    while True:
      event = await request.queue.get()
      if event[0] == 'text':
        pieces.append(event[1])
      elif event[0] == 'error':
        raise ApiError(500, event[1])
      else:
        return ''.join(pieces), event[1], event[2]

  def _stream(self, requests, chunk, prefixes, role=False):
    """Server-sent events: each request's text as it comes, then [DONE].
    A client that goes away cancels its requests, freeing their slots."""

    async def events():
      try:
        for index, request in enumerate(requests):
          if role:
            first = chunk(index, '', None)
            first['choices'][0]['delta'] = {'role': 'assistant'}
            yield _sse(first)
          if prefixes and prefixes[index]:
            yield _sse(chunk(index, prefixes[index], None))
          while True:
            event = await request.queue.get()
            if event[0] == 'text':
              yield _sse(chunk(index, event[1], None))
            else:
              reason = 'error' if event[0] == 'error' else event[1]
              last = chunk(index, '', reason)
              if event[0] == 'done':
                last['usage'] = event[2]
              yield _sse(last)
              break
        yield 'data: [DONE]\n\n'
      finally:
        for request in requests:
          self.engine.cancel(request)

    return StreamingResponse(events(), media_type='text/event-stream')


async def _client_leaves(request) -> None:
  """Returns when the client of `request` (its body already read) closes
  the connection."""
  while (await request.receive())['type'] != 'http.disconnect':
    pass


def _sse(value) -> str:
  return f'data: {json.dumps(value)}\n\n'


def _total(usages):
  return {key: sum(u[key] for u in usages)
          for key in ('prompt_tokens', 'completion_tokens', 'total_tokens')}


def _are_token_ids(value, vocab: int) -> bool:
  """Whether `value` is a list of token ids in [0, vocab) (bool is no
  number to the API): the one check of prompts and /detokenize."""
  return isinstance(value, list) and all(
      isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
      for t in value)
