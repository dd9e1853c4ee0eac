"""Scripts restart once with glibc's malloc asking for transparent huge pages.

XLA:CPU allocates a step's temporary buffers anew at every call (about
800 MB for bench-gpt's train step), and glibc hands blocks that large to
mmap and back to the kernel when freed. Each step then faulted in ~214,000
fresh 4 KiB pages: 0.4 s of kernel time per 0.84 s step on a 2-core machine.
With `glibc.malloc.hugetlb=1` malloc marks its memory for transparent huge
pages: ~1,200 faults a step, median step 0.65 s (mean 0.78 s: every few
steps the kernel stalls to compact memory for huge pages). Keeping freed
memory instead (mallopt's mmap_max=0, trim_threshold, arena_max=1) left the
heap fragmenting and growing by 800 MB every few steps.

glibc reads GLIBC_TUNABLES only when a process starts, so the script's
process re-executes itself with it added, before JAX is imported (from
experiments/__init__.py, only for `python -m experiments.NAME`). Nothing
happens off Linux/glibc, before glibc 2.35 (no such tunable), when the
kernel's transparent huge pages are not in 'madvise' mode ('always' needs no
asking; 'never' ignores it), or when GLIBC_TUNABLES already says
glibc.malloc.hugetlb (set it to 0 to opt out). experiments/benchmark.py
records what its process ran with.
"""

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def thp_mode() -> str:
  """The kernel's transparent-huge-page mode: the bracketed word of
  'always [madvise] never', or '' where there is no such file."""
  try:
    with open(_THP_MODE, encoding='ascii') as f:
      text = f.read()
  except OSError:
    return ''
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else ''


def tunables_to_add(environ, libc: tuple[str, str], thp: str
                    ) -> str | None:
  """The GLIBC_TUNABLES value to restart with, or None to stay as is, given
  the environment, platform.libc_ver() and the huge-page mode (thp_mode())."""
  current = environ.get('GLIBC_TUNABLES', '')
  name, version = libc
  if name != 'glibc' or thp != 'madvise' or TUNABLE in current:
    return None
  try:
    if tuple(int(part) for part in version.split('.')[:2]) < (2, 35):
      return None
  except ValueError:
    return None
  return f'{current}:{TUNABLE}=1' if current else f'{TUNABLE}=1'


def restart_with_huge_pages() -> None:
  """Re-executes this process with the tunable added, where it helps."""
  if sys.platform != 'linux':
    return
  value = tunables_to_add(os.environ, platform.libc_ver(), thp_mode())
  if value is None:
    return
  env = dict(os.environ, GLIBC_TUNABLES=value)
  try:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
  except OSError:
    pass  # Runs on without huge pages, only slower.


def runs_as_script(orig_argv: list[str]) -> bool:
  """Whether the command line is `python [options] -m experiments.NAME ...`."""
  if '-m' not in orig_argv[1:]:
    return False
  index = orig_argv.index('-m', 1)
  return (index + 1 < len(orig_argv) and
          orig_argv[index + 1].startswith('experiments.'))


def malloc_settings() -> dict:
  """The GLIBC_TUNABLES and huge-page mode this process runs with, for
  benchmark records."""
  return {'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
          'transparent_huge_pages': thp_mode()}
