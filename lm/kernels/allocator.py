"""On the CPU, scripts restart once with a memory allocator that keeps
freed memory.

XLA:CPU allocates a step's temporary buffers anew at every call. glibc's
malloc hands blocks that large to mmap and back to the kernel when they are
freed, so every step faults in fresh pages the kernel has to zero. In order
of preference:

- mimalloc (pip's cmeel-mimalloc, preloaded), told never to return freed
  memory to the kernel (MIMALLOC_PURGE_DELAY=-1) and to use large pages:
  no faults after the first step.
- glibc with `glibc.malloc.hugetlb=1` (Linux glibc >= 2.35, the kernel's
  transparent huge pages in 'madvise' mode): far fewer faults, of 2 MiB
  pages, and a stall every few steps while the kernel compacts memory.
  (Keeping freed memory in glibc instead, mallopt's mmap_max=0, fragmented
  its heap.)

Both are read when a process starts, so a script's process re-executes
itself with them: `restart_with_allocator`, called in one place,
experiments/cli.py's `run` (a script's entry point, never on import), and
only where JAX will run on the CPU: a GPU or TPU backend allocates device
memory its own way. A process
whose LD_PRELOAD the user set (tcmalloc on a TPU VM, say) stays as it is.
LM_ALLOCATOR=glibc skips mimalloc, LM_ALLOCATOR=system changes nothing; a
process that already preloads mimalloc or sets glibc.malloc.hugetlb stays as
it is. `describe` says what a process runs with. benchmarks/benchmark.py
and benchmarks/torch_peer.py record what their process ran with;
docs/performance.md has the measurements.
"""

import importlib.metadata
import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb'
# Never hand freed memory back (the default purges it after 10 ms, and the
# faults come back); large OS pages where the kernel gives them.
MIMALLOC_OPTIONS = {'MIMALLOC_PURGE_DELAY': '-1',
                    'MIMALLOC_ALLOW_LARGE_OS_PAGES': '1'}
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


def mimalloc_library() -> str | None:
  """The path of the libmimalloc.so that cmeel-mimalloc installed, if any."""
  try:
    files = importlib.metadata.files('cmeel-mimalloc') or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    if file.name.startswith('libmimalloc.so'):
      path = str(file.locate())
      if os.path.exists(path):
        return path
  return None


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


# Distributions whose presence means JAX will not run on the CPU (their
# names as importlib.metadata gives them, lower case, '-' for '_').
_ACCELERATOR_PLUGINS = {'jax-cuda': 'cuda', 'jax-rocm': 'rocm',
                        'libtpu': 'tpu'}


def accelerator(environ, distributions: list[str]) -> str | None:
  """The GPU/TPU platform JAX will take ('cuda', 'rocm', 'tpu'), or None for
  the CPU: JAX_PLATFORMS' first entry where set, else an installed plugin
  among `distributions` (installed_distributions())."""
  platforms = environ.get('JAX_PLATFORMS', '')
  if platforms:
    first = platforms.split(',')[0].strip().lower()
    return None if first == 'cpu' else first
  for name in distributions:
    name = name.lower().replace('_', '-')
    for prefix, platform_name in _ACCELERATOR_PLUGINS.items():
      if name.startswith(prefix):
        return platform_name
  return None


def installed_distributions() -> list[str]:
  return [dist.metadata['Name'] or '' for dist in
          importlib.metadata.distributions()]


def keeps_its_malloc(environ) -> bool:
  """Whether the environment settles it: LM_ALLOCATOR=system, or a preload
  of the user's own."""
  return environ.get('LM_ALLOCATOR', '') == 'system' or bool(
      environ.get('LD_PRELOAD'))


def settings_to_add(environ, mimalloc: str | None, libc: tuple[str, str],
                    thp: str, platform_name: str | None = None
                    ) -> dict[str, str]:
  """The environment variables to restart with ({} to stay as is), given the
  environment, mimalloc_library(), platform.libc_ver(), thp_mode() and the
  accelerator() JAX will use (None: the CPU)."""
  if keeps_its_malloc(environ) or platform_name is not None:
    return {}
  if mimalloc and environ.get('LM_ALLOCATOR', '') != 'glibc':
    added = {'LD_PRELOAD': mimalloc}
    added.update({name: value for name, value in MIMALLOC_OPTIONS.items()
                  if name not in environ})
    return added
  tunables = tunables_to_add(environ, libc, thp)
  return {'GLIBC_TUNABLES': tunables} if tunables else {}


def restart_with_allocator() -> None:
  """Re-executes this process with the allocator settings, where they help."""
  # Reading every installed package's metadata (to find an accelerator)
  # takes a tenth of a second or more: not when the environment settles it.
  if sys.platform != 'linux' or keeps_its_malloc(os.environ):
    return
  added = settings_to_add(os.environ, mimalloc_library(), platform.libc_ver(),
                          thp_mode(), accelerator(os.environ,
                                                  installed_distributions()))
  if not added:
    return
  try:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:],
              dict(os.environ, **added))
  except OSError:
    pass  # Runs on with the system's malloc, only slower.


def loaded_allocator() -> str:
  """'mimalloc' if this process has it loaded, else 'system'."""
  try:
    with open('/proc/self/maps', encoding='ascii', errors='replace') as f:
      return 'mimalloc' if 'libmimalloc' in f.read() else 'system'
  except OSError:
    return 'system'


def malloc_settings() -> dict:
  """What this process allocates with, for benchmark records."""
  return {'allocator': loaded_allocator(),
          **{name.lower(): os.environ.get(name, '')
             for name in MIMALLOC_OPTIONS},
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
          'transparent_huge_pages': thp_mode()}


def describe() -> str:
  """What this process allocates with, in a few words, for a log's first
  line."""
  if loaded_allocator() == 'mimalloc':
    return 'mimalloc (LM_ALLOCATOR=system keeps the system malloc)'
  if 'hugetlb=1' in os.environ.get('GLIBC_TUNABLES', ''):
    return 'glibc malloc with transparent huge pages'
  return 'the system malloc'
