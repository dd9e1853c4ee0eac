"""Chat templates (Jinja, as Hugging Face and GGUF files ship them) rendered
under limits: a template is content from a file, so a malformed or hostile
one gets one UsageError, not a traceback, an endless render or all memory.

Templates of at most SOURCE_CHARS characters run in Jinja's immutable
sandbox (no attribute tricks, no mutation, ranges of at most 100,000), for
at most SECONDS seconds, with at most CHARS characters of output and no
string or list built larger by `*`, `**` or the filters that multiply text
(`replace`, `center`, `indent`). Jinja's compile-time constant folding is
off, so that no filter runs outside the render's limits, and `lipsum` (text
by the megabyte) is gone. `raise_exception(message)`, which Hugging Face
templates call to refuse a conversation, is a UsageError too.
"""

import sys
import time

import jinja2
import jinja2.sandbox

from lm.errors import UsageError

SECONDS = 2.0
CHARS = 1_000_000
# Real chat templates are a few thousand characters; Jinja's compiler is
# not bounded in time or depth on larger ones.
SOURCE_CHARS = 100_000


class _TooLong(Exception):
  pass


def _too_large(size: int) -> None:
  """Refuses a value of `size` items (characters) before it is built."""
  if size > CHARS:
    raise UsageError(f'the chat template builds a value of more than '
                     f'{CHARS:,} items')


class _Environment(jinja2.sandbox.ImmutableSandboxedEnvironment):
  intercepted_binops = frozenset({'*', '**'})

  def call_binop(self, context, operator, left, right):
    for value, count in ((left, right), (right, left)):
      if (operator == '*' and isinstance(value, (str, list, tuple))
          and isinstance(count, int)):
        _too_large(len(value) * count)
    if (operator == '**' and isinstance(right, int) and right > 64
        and isinstance(left, int) and abs(left) > 1):
      raise UsageError('the chat template computes a number too large')
    return super().call_binop(context, operator, left, right)


def _bounded_filters(filters: dict) -> dict:
  """Jinja's filters whose output can be far larger than their input,
  checked before they run."""
  replace, center, indent = (filters[n] for n in ('replace', 'center',
                                                  'indent'))

  def bounded_replace(context, text, old, new, count=None):
    text, old, new = str(text), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    _too_large(len(text) + hits * len(new))
    return replace(context, text, old, new, count)

  def bounded_center(text, width=80):
    _too_large(width if isinstance(width, int) else 0)
    return center(text, width)

  def bounded_indent(text, width=4, *args, **kwargs):
    lines = str(text).count('\n') + 1
    _too_large(len(str(text)) + lines * (
        width if isinstance(width, int) else len(str(width))))
    return indent(text, width, *args, **kwargs)

  bounded_replace.jinja_pass_arg = replace.jinja_pass_arg
  return {**filters, 'replace': bounded_replace, 'center': bounded_center,
          'indent': bounded_indent}


def _raise_exception(message):
  raise UsageError(f'the chat template refuses these messages: {message}')


def render(source: str, **values) -> str:
  """The template `source` rendered with `values`."""
  if len(source) > SOURCE_CHARS:
    raise UsageError(f'the chat template has {len(source):,} characters; '
                     f'chat templates have at most {SOURCE_CHARS:,}')
  environment = _Environment(trim_blocks=True, lstrip_blocks=True,
                             optimized=False)
  environment.globals.pop('lipsum', None)
  environment.filters = _bounded_filters(environment.filters)
  try:
    template = environment.from_string(source)
  except (jinja2.TemplateError, RecursionError) as e:
    raise UsageError(f'the chat template does not parse: '
                     f'{type(e).__name__}: {str(e)[:200]}') from e
  deadline = time.monotonic() + SECONDS

  def trace(frame, event, arg):
    del event, arg
    if frame.f_code.co_filename != '<template>':
      return None  # Only the template's own lines are timed.
    if time.monotonic() > deadline:
      raise _TooLong
    return trace

  pieces, size = [], 0
  previous = sys.gettrace()
  sys.settrace(trace)
  try:
    for piece in template.generate(raise_exception=_raise_exception,
                                   **values):
      size += len(piece)
      if size > CHARS:
        raise UsageError(f'the chat template writes more than {CHARS:,} '
                         'characters')
      pieces.append(piece)
  except _TooLong:
    raise UsageError(f'the chat template ran longer than {SECONDS} s; it '
                     'is not a chat template lm can use') from None
  except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError,
          LookupError, AttributeError, RecursionError) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(f'the chat template failed: {type(e).__name__}: '
                     f'{str(e)[:200]}') from e
  finally:
    sys.settrace(previous)
  return ''.join(pieces)
