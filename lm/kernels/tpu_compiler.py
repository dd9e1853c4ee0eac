"""Compiling for a TPU slice on a machine that has none.

With the TPU compiler installed (libtpu, the `tpu-compile` extra pinned to
lm's JAX), `jax.experimental.topologies` describes a slice -- 'v5e:2x2',
'v5p:2x2x2', 'v6e:4x4', ... -- as devices that programs can be laid out
and compiled on, though nothing runs there. XLA's memory analysis of such a
program gives each chip's bytes before anyone books the slice.
"""

import dataclasses
import importlib.util
import os
import re
from typing import Any

from lm.errors import UsageError

# High-bandwidth memory per chip, by the device kind the topology reports
# (Google Cloud's TPU datasheets).
HBM_BYTES = {
    'TPU v4': 32 << 30,
    'TPU v5 lite': 16 << 30,  # v5e
    'TPU v5': 95 << 30,  # v5p
    'TPU v6 lite': 32 << 30,  # v6e (Trillium)
}
# The fused attention kernels' custom calls in compiled TPU HLO.
MOSAIC_CALL = 'tpu_custom_call'
_ACCELERATOR_TYPES = {'v4': 'v4-8', 'v5e': 'v5litepod-1', 'v5p': 'v5p-8',
                      'v6e': 'v6e-1'}
_NAME = re.compile(r'^v(4|5e|5p|6e):\d+(x\d+){1,2}$')


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # as given, e.g. 'v5e:2x2'
  devices: list[Any]  # one per TensorCore the slice's programs address
  device_kind: str  # e.g. 'TPU v5 lite'
  hbm_bytes: int | None  # per device; None where HBM_BYTES lacks the kind


def install_hint() -> str:
  return ("install the TPU compiler: .venv/bin/pip install -c "
          "constraints.txt -e '.[tpu-compile]'")


def topology(name: str) -> Topology:
  """The devices of the TPU slice `name` (e.g. 'v5e:4x4'), to compile for;
  UsageError where the name is malformed or the compiler is missing."""
  if not _NAME.match(name):
    raise UsageError(f'--topology={name!r} is not a TPU slice such as '
                     "'v5e:2x2', 'v5e:4x4', 'v5p:2x2x2' or 'v6e:2x4'")
  if importlib.util.find_spec('libtpu') is None:
    raise UsageError(f'compiling for --topology={name} needs the TPU '
                     f'compiler, which is not installed; {install_hint()}')
  # libtpu looks for this host's TPU first and warns over several lines
  # that it found none; naming one (any of the generation: compiling for a
  # topology does not read it) and a worker keeps it quiet.
  os.environ.setdefault('TPU_ACCELERATOR_TYPE',
                        _ACCELERATOR_TYPES[name.split(':')[0]])
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    description = topologies.get_topology_desc(topology_name=name,
                                               platform='tpu')
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(f'the TPU compiler refused --topology={name}: '
                     f'{str(e).splitlines()[0][:300]}') from None
  devices = list(description.devices)
  kind = devices[0].device_kind
  return Topology(name, devices, kind, HBM_BYTES.get(kind))


def attention_kernels(hlo_text: str) -> str:
  """Which attention a compiled TPU program runs: the Pallas (Mosaic)
  kernel, or XLA's own ops (the scores in memory)."""
  if MOSAIC_CALL in hlo_text:
    return 'pallas mosaic (tpu_custom_call)'
  return 'xla (no fused kernel)'
