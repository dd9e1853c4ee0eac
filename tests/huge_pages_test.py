"""When a script restarts itself with glibc's huge-page tunable."""

import pytest

from experiments import huge_pages

GLIBC = ('glibc', '2.36')


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
  assert huge_pages.tunables_to_add(environ, libc, thp) == expected


@pytest.mark.parametrize('argv, expected', [
    (['python', '-m', 'experiments.train', '--config=c.py'], True),
    (['python', '-u', '-m', 'experiments.benchmark'], True),
    (['python', '-m', 'pytest', '-m', 'experiments.x'], False),
    (['python', 'experiments/train.py'], False),
    (['python', '-c', 'import experiments'], False),
    (['python', '-m'], False),
])
def test_only_scripts_run_with_dash_m_restart(argv, expected):
  assert huge_pages.runs_as_script(argv) == expected
