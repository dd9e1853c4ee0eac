"""Runs the tests that need 8 devices (tests/sharding_test.py) in a process
that has them: 8 fake CPU devices must be requested before JAX starts, and
this process started with one."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTIDEVICE_TESTS = ['tests/sharding_test.py']


@pytest.mark.slow
def test_multidevice_tests_pass_on_8_cpu_devices():
  env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '') +
             ' --xla_force_host_platform_device_count=8')
  result = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
       *MULTIDEVICE_TESTS], cwd=ROOT, env=env, capture_output=True,
      text=True, check=False)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  assert ' skipped' not in result.stdout.splitlines()[-1], result.stdout
