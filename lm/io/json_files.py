"""JSON files a user may have damaged: read in bounded memory, and any
malformed content is one UsageError naming the file."""

import json

from lm.errors import UsageError
from lm.io import paths

# Tokenizer files of the largest vocabularies are tens of MB.
MAX_BYTES = 256 << 20


def load(path: str, what: str = 'JSON file', max_bytes: int = MAX_BYTES):
  """The value `path` holds (a regular file of at most `max_bytes`: never
  a FIFO or device, whose reading could block or never end); its type is
  the caller's to check."""
  paths.regular_file(path, what, max_bytes)
  try:
    with open(path, 'rb') as f:
      return json.loads(f.read(max_bytes + 1).decode('utf-8'))
  except OSError as e:
    raise UsageError(f'the {what} {path} cannot be read: {e.strerror}'
                     ) from None
  except (ValueError, RecursionError) as e:  # ValueError: bad UTF-8, bad
    # JSON, or an integer past Python's digit limit.
    reason = ('nested too deeply' if isinstance(e, RecursionError)
              else str(e)[:200])
    raise UsageError(f'the {what} {path} is damaged (not JSON: {reason})'
                     ) from None


def load_object(path: str, what: str = 'JSON file') -> dict:
  """`load`, refusing anything but a JSON object."""
  value = load(path, what)
  if not isinstance(value, dict):
    raise UsageError(f'the {what} {path} holds a JSON '
                     f'{type(value).__name__}, not an object')
  return value
