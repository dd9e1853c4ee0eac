"""The platform a program is traced for: the one JAX runs on, or the one
named by `lowering_for` while a program is traced ahead of time for another
(tests lower the train step for 'gpu' and 'tpu' on a CPU).

Kernels ask `current()` when they are traced, so each platform gets its own
implementation without a branch in the compiled program.
"""

import contextlib

import jax

PLATFORMS = ('cpu', 'gpu', 'tpu')
_JAX_NAMES = {'cuda': 'gpu', 'rocm': 'gpu'}
_overrides: list[str] = []


def current() -> str:
  """'cpu', 'gpu' or 'tpu'."""
  if _overrides:
    return _overrides[-1]
  backend = jax.default_backend()
  return _JAX_NAMES.get(backend, backend)


def devices_share_a_processor() -> bool:
  """Whether this process's devices are one processor's (a CPU split into
  devices) rather than a chip each."""
  return current() == 'cpu'


@contextlib.contextmanager
def lowering_for(platform: str):
  """Kernels traced inside pick `platform`'s implementations (lower the
  traced program with `lowering_platforms` of that platform: 'cuda' or
  'rocm' for 'gpu')."""
  if platform not in PLATFORMS:
    raise ValueError(f'platform {platform!r} is not one of {PLATFORMS}')
  _overrides.append(platform)
  try:
    yield
  finally:
    _overrides.pop()


def choose_collectives() -> None:
  """Before jax.distributed.initialize: processes whose devices are CPUs
  exchange arrays through gloo (JAX's CPU default has no cross-process
  collectives); GPUs and TPUs keep their own (NCCL, ICI), which this
  setting does not touch."""
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
