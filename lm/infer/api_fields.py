"""The OpenAI API's request fields and error shape, checked and built.

`field` reads one field of a request body with its type and range checked
(bool is not a number to the API); `ApiError` is a refusal that
`error_response` turns into {"error": {"message", "type", "param",
"code"}} with its status. lm/infer/openai_api.py serves with them.
"""

from starlette.responses import JSONResponse


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


def number(body, name, default, low, high):
  return float(field(body, name, (int, float), default,
                      lambda v: low <= v <= high,
                      f'a number in [{low}, {high}]'))
