"""tensorboardX, loaded without torch.

tensorboardX imports torch whenever it is installed, only so that torch
tensors are accepted as values; lm passes numpy arrays. That import is about
3 s of every training run's start-up (import of experiments/train.py: 7.9 s
with it, 5.1 s without, on the 2-core development VM), paid by anyone with
torch in their environment. So torch is hidden while tensorboardX loads,
unless something has loaded it already.
"""

import importlib
import sys
import types


def load() -> types.ModuleType:
  """The tensorboardX package (imported on the first call)."""
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    return importlib.import_module('tensorboardX')
  # A None entry makes `import torch` raise ImportError, which tensorboardX
  # catches; only tensorboardX, protobuf and the standard library load
  # meanwhile.
  sys.modules['torch'] = None
  try:
    return importlib.import_module('tensorboardX')
  finally:
    del sys.modules['torch']
