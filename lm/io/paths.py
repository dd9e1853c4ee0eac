"""Paths a user names, checked before any work.

Each check raises UsageError naming the path and the problem. An empty path
is refused everywhere: to the operating system it is the current directory,
which no flag means.
"""

import os
import stat

from lm.errors import UsageError

# The longest name of one file or folder on Linux and macOS file systems.
NAME_MAX = 255


def _named(path: str, what: str) -> str:
  """`path` as given, refused if empty, with a NUL byte or a name too long."""
  if not isinstance(path, str) or not path.strip():
    raise UsageError(f'the {what} is an empty path; name a path (an empty '
                     'one would mean the current directory)')
  if '\0' in path:
    raise UsageError(f'the {what} {path!r} holds a NUL byte')
  for name in path.split(os.sep):
    size = len(os.fsencode(name))
    if size > NAME_MAX:
      raise UsageError(f'the {what} has a name of {size} bytes '
                       f'({name[:32]}...); names have at most {NAME_MAX}')
  return path


def new_directory(path: str, what: str = 'output directory',
                  source: str | None = None) -> str:
  """The absolute path of a directory a result may be created as: absent
  or empty, not a symbolic link, under a writable folder, and not inside
  the `source` it is made from (whose own files it would then change)."""
  _named(path, what)
  if source is not None and within(path, source):
    raise UsageError(f'the {what} {path} lies inside {source}, which it is '
                     'made from; choose a directory outside it')
  if os.path.islink(path):
    raise UsageError(f'the {what} {path} is a symbolic link; name a real '
                     'new directory (nothing was written)')
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise UsageError(f'{path} already exists and is not empty; choose a new '
                     'directory (nothing was written)')
  final = os.path.abspath(path)
  parent = os.path.dirname(final)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UsageError(f'the {what} {path} is under {parent}, which is a file')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UsageError(f'cannot create the {what} {path}: {parent} is not '
                     'writable')
  return final


def within(path: str, folder: str) -> bool:
  """Whether `path` (which may not exist yet) is `folder` or under it,
  links resolved."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


def existing_directory(path: str, what: str = 'workdir') -> str:
  """`path`, a directory that exists and can be read."""
  _named(path, what)
  if not os.path.exists(path):
    raise UsageError(f'the {what} {path} does not exist')
  if not os.path.isdir(path):
    raise UsageError(f'the {what} {path} is a file, not a directory')
  if not os.access(path, os.R_OK | os.X_OK):
    raise UsageError(f'the {what} {path} cannot be read (permissions)')
  return path


def source(path: str, what: str = 'source') -> str:
  """`path`, a regular file or a directory that can be read: never a FIFO
  or a device, whose reading could wait forever or never end."""
  _named(path, what)
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise UsageError(f'the {what} {path} does not exist') from None
  except OSError as e:
    raise UsageError(f'the {what} {path} cannot be read: {e.strerror}'
                     ) from None
  if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
    raise UsageError(f'the {what} {path} is not a regular file (a pipe, '
                     'socket or device); give a file')
  if not os.access(path, os.R_OK):
    raise UsageError(f'the {what} {path} cannot be read (permissions)')
  return path


def regular_file(path: str, what: str, max_bytes: int) -> str:
  """`path`, a regular file (links followed) of at most `max_bytes`: not a
  folder, pipe or device (/dev/zero never ends)."""
  source(path, what)
  if not os.path.isfile(path):
    raise UsageError(f'the {what} {path} is a directory, not a file')
  size = os.path.getsize(path)
  if size > max_bytes:
    raise UsageError(f'the {what} {path} has {size:,} bytes, more than the '
                     f'{max_bytes:,} such a file can sensibly hold')
  return path
