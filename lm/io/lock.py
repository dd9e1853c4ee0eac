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
import stat

from lm.errors import UsageError
from lm.io import layout


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir or raises UsageError."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, layout.LOCK)
    self.workdir = workdir
    self._file = None

  def __enter__(self) -> 'WorkdirLock':
    # Never through a link planted at the name (whose target the holder's
    # line would overwrite), never a FIFO or device (which could block).
    problem = None
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW |
                   os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
      problem = ('is a symbolic link' if os.path.islink(self.path)
                 else f'cannot be opened ({e.strerror})')
    else:
      if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        problem = 'is not a regular file'
    if problem:
      raise UsageError(f"{self.path} {problem}, so it cannot be the run's "
                       'lock file; remove it, or use another --workdir')
    handle = os.fdopen(fd, 'r+', encoding='utf-8')
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
