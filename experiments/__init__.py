"""absl-flag scripts, run as `python -m experiments.NAME` (README.md).

Run so, a script's process first restarts itself once with a memory
allocator that keeps freed memory (experiments/allocator.py says why).
"""

import sys

from experiments import allocator

if allocator.runs_as_script(sys.orig_argv):
  allocator.restart_with_allocator()
