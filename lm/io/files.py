"""The one way lm writes a file in place: whole or not at all, never
through a link.

`write_atomic` writes to a fresh temporary name beside the file (created
exclusively, so a link planted there is refused rather than followed),
flushes it to disk and renames it over the file in one step: a reader
sees the old contents or the new, never half. A symbolic link where the
file goes is refused: replacing it would drop the user's link, and
writing through it would touch a file lm does not own.
"""

import os
import uuid

from lm.errors import UsageError


def write_atomic(path: str, data: bytes | str) -> None:
  """`data` (text as UTF-8) into `path`, in one rename."""
  if os.path.islink(path):
    raise UsageError(f'{path} is a symbolic link; lm writes no file through '
                     'a link (remove it, or give another path)')
  if isinstance(data, str):
    data = data.encode('utf-8')
  tmp = f'{path}.{uuid.uuid4().hex[:12]}.tmp'
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
               getattr(os, 'O_NOFOLLOW', 0), 0o666)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
