"""One run at a time per workdir: an exclusive lock on <workdir>/.lock.

Two runs writing the same checkpoints, TensorBoard files and config would
corrupt each other. The lock is `fcntl.flock` on a file in the workdir: the
operating system drops it when its process ends, however it ends, so a
killed run leaves no stale lock behind. The file keeps the holder's pid and
host, for the message the next run prints.
"""

import fcntl
import os
import socket

from lm.errors import UsageError
from lm.io import layout


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir or raises UsageError."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, layout.LOCK)
    self.workdir = workdir
    self._file = None

  def __enter__(self) -> 'WorkdirLock':
    handle = open(self.path, 'a+', encoding='utf-8')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or 'unknown process'
      handle.close()
      raise UsageError(
          f'{self.workdir} is in use by another run ({holder}); wait for '
          'it to end or use another --workdir') from None
    handle.truncate(0)
    handle.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc_info) -> None:
    self._file.truncate(0)
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None
