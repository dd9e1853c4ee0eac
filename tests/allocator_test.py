"""When and how a script restarts itself with another memory allocator."""

import importlib
import os
import sys

import pytest

from lm.kernels import allocator

GLIBC = ('glibc', '2.36')
LIB = '/venv/lib/libmimalloc.so.3'
MIMALLOC = {'LD_PRELOAD': LIB, 'MIMALLOC_PURGE_DELAY': '-1',
            'MIMALLOC_ALLOW_LARGE_OS_PAGES': '1'}


@pytest.mark.parametrize('environ, libc, thp, expected', [
    ({}, GLIBC, 'madvise', 'glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, GLIBC, 'madvise',
     'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': ''}, GLIBC, 'madvise', 'glibc.malloc.hugetlb=1'),
    # The user's own setting (0 opts out), and a restarted process: as is.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, GLIBC, 'madvise', None),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, GLIBC, 'madvise', None),
    ({}, GLIBC, 'always', None),    # Huge pages without asking.
    ({}, GLIBC, 'never', None),     # Asking would do nothing.
    ({}, GLIBC, '', None),          # No such kernel setting.
    ({}, ('glibc', '2.31'), 'madvise', None),  # No such tunable before 2.35.
    ({}, ('', ''), 'madvise', None),           # Not glibc (musl, macOS).
    ({}, ('glibc', 'unknown'), 'madvise', None),
])
def test_tunables_to_add(environ, libc, thp, expected):
  assert allocator.tunables_to_add(environ, libc, thp) == expected


def test_only_a_scripts_entry_point_restarts(monkeypatch):
  """Importing the script packages restarts nothing, even in a process
  started as `python -m experiments.train`; cli.run, a script's entry
  point, is the one place that asks for the allocator."""
  from experiments import cli  # pylint: disable=g-import-not-at-top

  def refuse(*args):
    raise AssertionError(f'the process restarted on import: {args}')

  monkeypatch.setattr(os, 'execve', refuse)
  monkeypatch.setenv('LM_ALLOCATOR', '')
  monkeypatch.setattr(sys, 'orig_argv',
                      ['python', '-m', 'experiments.train', '--x'])
  for name in ('experiments', 'benchmarks', 'tools'):
    importlib.reload(importlib.import_module(name))
  asked = []
  monkeypatch.setattr(allocator, 'restart_with_allocator',
                      lambda: asked.append('restart'))
  monkeypatch.setattr(sys, 'argv', ['script'])
  with pytest.raises(SystemExit):
    cli.run(lambda argv: asked.append('main'))
  assert asked == ['restart', 'main']


@pytest.mark.parametrize('environ, mimalloc, expected', [
    ({}, LIB, MIMALLOC),
    # The user's own preload (tcmalloc, say) is left alone.
    ({'LD_PRELOAD': '/x.so'}, LIB, {}),
    # The user's own mimalloc options stay.
    ({'MIMALLOC_PURGE_DELAY': '100'}, LIB,
     {k: v for k, v in MIMALLOC.items() if k != 'MIMALLOC_PURGE_DELAY'}),
    # A restarted process, and the opt-outs.
    (dict(MIMALLOC), LIB, {}),
    ({'LM_ALLOCATOR': 'system'}, LIB, {}),
    ({'LM_ALLOCATOR': 'glibc'}, LIB,
     {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}),
    # Without mimalloc: glibc's huge pages.
    ({}, None, {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, None, {}),
])
def test_settings_to_add(environ, mimalloc, expected):
  assert allocator.settings_to_add(environ, mimalloc, GLIBC,
                                   'madvise') == expected


def test_the_installed_mimalloc_is_found():
  # setup.cfg installs cmeel-mimalloc on Linux.
  path = allocator.mimalloc_library()
  assert path and os.path.basename(path).startswith('libmimalloc.so')


@pytest.mark.parametrize('environ, distributions, expected', [
    ({}, ['jax', 'jaxlib'], None),
    ({}, ['jax', 'jax-cuda13-plugin', 'jax-cuda13-pjrt'], 'cuda'),
    ({}, ['jax_cuda12_plugin'], 'cuda'),
    ({}, ['libtpu'], 'tpu'),
    ({'JAX_PLATFORMS': 'cpu'}, ['jax-cuda13-plugin'], None),
    ({'JAX_PLATFORMS': 'cuda,cpu'}, [], 'cuda'),
])
def test_the_accelerator_jax_will_take(environ, distributions, expected):
  assert allocator.accelerator(environ, distributions) == expected


def test_no_restart_where_jax_runs_on_an_accelerator():
  assert allocator.settings_to_add({}, LIB, GLIBC, 'madvise', 'cuda') == {}
  assert allocator.settings_to_add({}, LIB, GLIBC, 'madvise', 'tpu') == {}
  assert allocator.settings_to_add({}, LIB, GLIBC, 'madvise', None) == MIMALLOC

