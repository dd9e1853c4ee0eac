"""The OpenAI API's request fields and error shape, checked and built.

`read_body` reads a request's JSON object (its type, size, arrival time
and the fields no endpoint takes); `field` reads one field of it with its
type and range checked (bool is not a number to the API); `ApiError` is a
refusal that
`error_response` turns into {"error": {"message", "type", "param",
"code"}} with its status. lm/infer/openai_api.py serves with them.
"""

import asyncio
import json

from starlette.responses import JSONResponse

# A request body larger than this is refused unread (413).
MAX_BODY_BYTES = 1 << 20
# A body not received in this many seconds is refused (408), so that a
# client that announces one and never sends it holds nothing for long.
BODY_SECONDS = 30
# Fields that would change what a request means, which lm does not do: a
# request that sets them is refused rather than answered as if it had not.
# Each may be absent, empty, or its one value that changes nothing.
UNSUPPORTED = {'response_format': {'type': 'text'}, 'tools': None,
               'tool_choice': None, 'functions': None, 'function_call': None,
               'logit_bias': None, 'suffix': None, 'best_of': 1}


class ApiError(Exception):

  def __init__(self, status: int, message: str, param: str | None = None,
               code: str | None = None):
    super().__init__(message)
    self.status, self.param, self.code = status, param, code


def error_response(status, message, param=None, code=None):
  kind = {401: 'authentication_error', 404: 'not_found_error',
          405: 'method_not_allowed', 413: 'request_too_large',
          500: 'server_error'}.get(status, 'invalid_request_error')
  return JSONResponse({'error': {'message': message, 'type': kind,
                                 'param': param, 'code': code}}, status)


def field(body, name, kinds, default, check=None, what=''):
  """body[name] if of one of `kinds` (bool is not a number here)."""
  value = body.get(name, default)
  if value is None:
    return default
  if isinstance(value, bool) and bool not in kinds:
    value = object()  # True is an int to Python, not to the API.
  if not isinstance(value, kinds):
    raise ApiError(400, f'{name} must be {what or kinds[0].__name__}',
                   name)
  if check is not None and not check(value):
    raise ApiError(400, f'{name}={value!r} is out of range ({what})', name)
  return value


def number(body, name, default, low, high, problem=None):
  """A number field in [low, high]; `problem(value)`, if given, names any
  further reason to refuse it."""
  value = float(field(body, name, (int, float), default,
                      lambda v: low <= v <= high,
                      f'a number in [{low}, {high}]'))
  reason = problem and problem(value)
  if reason:
    raise ApiError(400, reason, name)
  return value


async def read_body(request, model_name: str) -> dict:
  """The JSON object a request sends, checked: its type, size, arrival
  time, encoding, and the fields that no endpoint may set otherwise (the
  model served, n, meanings lm does not implement)."""
  kind = request.headers.get('content-type', '').split(';')[0].strip()
  if kind.lower() != 'application/json':
    raise ApiError(415, f'the body must be sent as Content-Type: '
                   f'application/json, not {kind[:100]!r}')
  size = int(request.headers.get('content-length') or 0)
  if size > MAX_BODY_BYTES:
    raise ApiError(413, f'the body has {size:,} bytes; at most '
                   f'{MAX_BODY_BYTES:,}')
  chunks, size = [], 0
  try:
    async with asyncio.timeout(BODY_SECONDS):
      async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
          raise ApiError(413, f'the body is over {MAX_BODY_BYTES:,} bytes')
        chunks.append(chunk)
  except TimeoutError:
    raise ApiError(408, f'the body did not arrive within {BODY_SECONDS} '
                   's') from None
  try:
    body = json.loads(b''.join(chunks).decode('utf-8'))
  except (ValueError, RecursionError):  # Integers past Python's digit
    # limit are a ValueError too, like bad UTF-8 and bad JSON.
    raise ApiError(400, 'the body is not JSON (UTF-8)') from None
  if not isinstance(body, dict):
    raise ApiError(400, 'the body must be a JSON object')
  try:  # JSON escapes can spell lone surrogates, which are not text.
    json.dumps(body, ensure_ascii=False).encode('utf-8')
  except UnicodeEncodeError:
    raise ApiError(400, 'the body holds a lone surrogate escape (such as '
                   '\\ud800), which is not text') from None
  model = body.get('model')
  if model is not None and model != model_name:
    raise ApiError(404, f'the model {str(model)[:100]!r} does not exist; '
                   f'this server serves {model_name!r}', 'model',
                   'model_not_found')
  if body.get('n', 1) != 1:
    raise ApiError(400, 'n must be 1', 'n')
  for name, neutral in UNSUPPORTED.items():
    if body.get(name) not in (None, [], {}, '', neutral):
      raise ApiError(400, f'{name} is not supported by this server; '
                     'send the request without it', name)
  return body
