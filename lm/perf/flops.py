"""Model FLOPs per token and the peak they are measured against (MFU).

Model FLOPs count the arithmetic the model needs, not what the program runs
(rematerialization is not counted), as PaLM (Chowdhery et al., 2022,
Appendix B) and MaxText count them. One training token costs

  6 * N + 12 * L * H * Q * T

where N counts the parameters that multiply activations (every dense
kernel, the output layer, and of a mixture of experts the share of expert
weights one token uses), L is the number of layers, H the heads, Q the head
width and T the sequence length: 2 FLOPs per weight per token forward, 4
backward, plus QK^T and the attention-weighted sum of V (2 matmuls of
2*T*Q per head, forward and backward). Like PaLM's, the attention term
counts the whole T x T score matrix, causal or not. Embedding lookups, norms
and the softmax are left out.

MFU divides the achieved model FLOP/s by a peak: the datasheet's on a GPU or
TPU, the best of several square matmuls this process times on a CPU. A
measured peak is only a lower bound of what the machine can do, so a step
that beats it raises it (`Peak`): MFU never reads above 100%.
"""

import functools
import os
import time

import flax.traverse_util
import jax
import jax.numpy as jnp

from lm.kernels import platform
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig

FORMULA = '6*N + 12*L*H*Q*T (PaLM, Appendix B)'

# Dense bfloat16 peak FLOP/s of one chip from vendors' datasheets (without
# structured sparsity), by words in `jax.Device.device_kind`; the first
# match wins, so the PCIe and NVL cards come before the SXM ones they share
# a name with.
DATASHEET_PEAK_BF16 = {
    'H100 PCIe': 756e12, 'H100 NVL': 835e12, 'H200 NVL': 835e12,
    'H200': 989e12, 'H100': 989e12, 'A100': 312e12,
    'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12,
    'TPU v5p': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
}
# Memory bandwidth in bytes/s of one chip from the same datasheets: what a
# decoding step, which reads every weight and the KV cache, is bound by.
DATASHEET_BANDWIDTH = {
    'H100 PCIe': 2.0e12, 'H100 NVL': 3.9e12, 'H200 NVL': 4.8e12,
    'H200': 4.8e12, 'H100': 3.35e12, 'A100-SXM4-80GB': 2.039e12,
    'A100': 1.555e12, 'TPU v4': 1.2e12, 'TPU v5 lite': 0.819e12,
    'TPU v5e': 0.819e12, 'TPU v5p': 2.765e12, 'TPU v6 lite': 1.64e12,
    'TPU v6e': 1.64e12,
}


def matmul_params(model_config: ModelConfig, params=None) -> int:
  """N of the formula: weights that multiply activations, per token.
  `params` (arrays or shapes) saves tracing the model when at hand."""
  if params is None:
    params = model_params.abstract_params(
        registry.build_model(model_config))
  flat = flax.traverse_util.flatten_dict(params)
  total = 0.0
  for path, leaf in flat.items():
    name = path[-1]
    if name == 'kernel' or name == 'router':
      total += leaf.size
    elif 'moe' in path and name in ('wi', 'wi_0', 'wi_1', 'wo'):
      # A token goes through experts_per_token of num_experts experts.
      total += leaf.size * (model_config.experts_per_token /
                            model_config.num_experts)
    elif (name == 'embedding' and path[-2] == 'embed' and
          model_config.tie_embeddings and model_config.num_classes == 0):
      total += leaf.size  # The tied table is the output layer too.
  return int(total)


def train_flops_per_token(model_config: ModelConfig, seq_len: int,
                          params=None) -> float:
  """FORMULA for a model (its `params`' shapes, if at hand) and length."""
  config = model_config
  attention_layers = registry.get(config.family).attention_layers(config)
  attention = (12 * attention_layers * config.num_heads * config.head_width
               * seq_len)
  return 6 * matmul_params(config, params) + attention


def measure_matmul_peak(dtype=jnp.float32, size: int = 1024,
                        repeats: int = 10, calls: int = 5) -> float:
  """FLOP/s of this process's best square matmul on the default device.

  A chain of `repeats` dependent [size, size] products runs in one compiled
  call, so dispatch is paid once; the best of `calls` calls after a
  compiling one is taken (the least disturbed).
  """
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  scale = jnp.asarray(1 / size ** 0.5, dtype)  # Keeps values finite.

  @jax.jit
  def chain(x):
    for _ in range(repeats):
      x = (x @ a) * scale
    return x

  chain(a).block_until_ready()
  best = float('inf')
  for _ in range(calls):
    start = time.perf_counter()
    chain(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 * repeats / best


def datasheet_peak(device: jax.Device | None = None,
                   table: dict[str, float] = DATASHEET_PEAK_BF16
                   ) -> float | None:
  """The datasheet's bfloat16 peak (or another `table`'s figure) of
  `device` (default: the first), or None where unknown (every CPU)."""
  device = device or jax.devices()[0]
  for name, figure in table.items():
    if name.lower() in device.device_kind.lower():
      return figure
  return None


@functools.cache
def peak_flops(dtype_name: str = 'float32') -> dict[str, float | None]:
  """FLOP/s that MFU divides by, for the whole run (every process).

  'measured': this process's best square matmul (lm's own peak), times the
  processes; on a CPU it covers every local device, which share the cores.
  'datasheet': the devices' datasheet peak, where known (GPU, TPU).
  Measured once per process tree (a second or two): the figure goes to the
  environment variable LM_MATMUL_PEAK_<DTYPE>, which the processes this
  one starts inherit and read instead of measuring again (set it to skip
  the measurement).
  """
  dtype = jnp.dtype(dtype_name)
  variable = f'LM_MATMUL_PEAK_{dtype.name.upper()}'
  try:
    measured = float(os.environ[variable])
  except (KeyError, ValueError):
    measured = max(measure_matmul_peak(dtype, size) for size in (512, 1024))
    os.environ[variable] = repr(measured)
  if not platform.devices_share_a_processor():
    measured *= jax.local_device_count()
  sheet = datasheet_peak()
  return {'measured': measured * jax.process_count(),
          'datasheet': sheet and sheet * jax.device_count()}


class Peak:
  """The FLOP/s MFU divides by, for one run.

  A datasheet peak stays as it is. A measured one (a CPU's) is raised to
  any achieved rate above it, since the machine has just done better than
  the matmuls timed at the start (another process may have been busy then);
  `take_news` says so once.
  """

  def __init__(self, flops_per_s: float, measured: bool):
    self.flops_per_s, self.measured = flops_per_s, measured
    self._news = None

  @classmethod
  def for_run(cls, dtype_name: str = 'float32') -> 'Peak':
    peaks = peak_flops(dtype_name)
    if peaks['datasheet']:
      return cls(peaks['datasheet'], measured=False)
    return cls(peaks['measured'], measured=True)

  def mfu(self, achieved_flops_per_s: float) -> float:
    """achieved / peak, raising a measured peak the rate beats."""
    if self.measured and achieved_flops_per_s > self.flops_per_s:
      self._news = (f'MFU peak raised from {self.flops_per_s / 1e9:,.1f} to '
                    f'{achieved_flops_per_s / 1e9:,.1f} GFLOP/s: a step beat '
                    'the matmuls measured at the start')
      self.flops_per_s = achieved_flops_per_s
    return achieved_flops_per_s / self.flops_per_s

  def take_news(self) -> str | None:
    """A line saying the peak moved since the last call, or None."""
    news, self._news = self._news, None
    return news
