"""absl-flag scripts, run as `python -m experiments.NAME` (README.md).

Run so, a script's process first restarts itself once with glibc's malloc
asking for transparent huge pages (experiments/huge_pages.py says why).
"""

import sys

from experiments import huge_pages

if huge_pages.runs_as_script(sys.orig_argv):
  huge_pages.restart_with_huge_pages()
