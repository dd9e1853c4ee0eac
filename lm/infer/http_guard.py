"""Which HTTP requests the server answers at all, before any endpoint runs.

A web page in the user's browser may send a "simple" cross-site POST (say
`text/plain`, which needs no preflight) to a server on 127.0.0.1, and with
DNS rebinding it can also read the answer: the browser then believes it
talks to the attacker's own domain, and the Host header names that domain.
So, as Jupyter guards its local server:

- the Host header must name the address served: a loopback name (or the
  address itself) for a server on one address, or one of `allowed_hosts`.
  A server on every interface (0.0.0.0, ::) cannot know the names it is
  reached by and checks Host only where `allowed_hosts` is given;
- a request that carries an Origin (browsers send it with every POST and
  every cross-site request) must come from the server's own origin or one
  of `cors_origins`, whose preflights starlette's CORSMiddleware answers;
- a body must be declared `application/json` (lm/infer/openai_api.py), so
  that a page cannot send one without a preflight.

A refusal is the API's JSON error with status 403.
"""

import urllib.parse

from starlette.middleware.cors import CORSMiddleware

from lm.infer.api_fields import error_response

LOOPBACK = ('localhost', '127.0.0.1', '::1')
EVERY_INTERFACE = ('0.0.0.0', '::', '')


def host_name(value: str) -> str | None:
  """The host of a Host header or URL authority ('[::1]:8000' -> '::1'),
  lower case; None if it is malformed."""
  try:
    parsed = urllib.parse.urlsplit('//' + value.strip())
    name, _ = parsed.hostname, parsed.port  # .port raises on a bad port.
  except ValueError:
    return None
  if not name or parsed.username or parsed.password or parsed.path:
    return None
  return name.lower()


class Guard:
  """ASGI middleware: refuses requests whose Host or Origin the server does
  not answer to (see the module's docstring), and serves `cors_origins`'
  preflights."""

  def __init__(self, app, bound_host: str, allowed_hosts=(),
               cors_origins=()):
    self.app = app if not cors_origins else CORSMiddleware(
        app, allow_origins=list(cors_origins), allow_methods=['GET', 'POST'],
        allow_headers=['Authorization', 'Content-Type'])
    self.bound_host = (host_name(bound_host) or bound_host).lower()
    self.allowed_hosts = {h.lower() for h in allowed_hosts}
    self.cors_origins = set(cors_origins)

  async def __call__(self, scope, receive, send):
    if scope['type'] == 'http':
      headers = {k.decode('latin-1').lower(): v.decode('latin-1')
                 for k, v in scope['headers']}
      problem = self.refusal(headers)
      if problem:
        await error_response(403, problem)(scope, receive, send)
        return
    await self.app(scope, receive, send)

  def refusal(self, headers: dict[str, str]) -> str | None:
    """Why a request with these (lower-cased) headers is refused, or None."""
    host = headers.get('host', '')
    if not self.host_allowed(host):
      return (f'the Host {host[:100]!r} is not an address this server '
              'answers to (a web page reached through another name is '
              'refused); start the server with --allowed_hosts=NAME to '
              'serve under that name')
    origin = headers.get('origin')
    if origin is not None and not self.origin_allowed(origin, host):
      return (f'cross-origin requests from {origin[:100]!r} are refused; '
              'start the server with --cors_origins=ORIGIN to let that '
              "page's scripts call it")
    return None

  def host_allowed(self, host: str) -> bool:
    if '*' in self.allowed_hosts:
      return True
    name = host_name(host)
    if name is None:
      return False
    if name in self.allowed_hosts:
      return True
    if self.bound_host in EVERY_INTERFACE:
      return not self.allowed_hosts
    return name in LOOPBACK or name == self.bound_host

  def origin_allowed(self, origin: str, host: str) -> bool:
    if '*' in self.cors_origins or origin in self.cors_origins:
      return True
    parsed = urllib.parse.urlsplit(origin)
    # The server's own pages (same scheme-less authority as the request).
    return (parsed.scheme in ('http', 'https')
            and parsed.netloc.lower() == host.strip().lower())

