"""How a quantized model stores its weights: int8 per channel, int4 in
groups, an int8 KV cache.

A quantized model is an ordinary model whose config says `quant='int8'` or
`'int4'`: each dense kernel (and the embedding table) is then two parameters,
the integers under the kernel's own name and `<name>_scale` beside them, and
the layers dequantize one kernel at a time inside the compiled forward pass
(`kernel_param`). lm/compress/quantize.py converts a float model's params
into this layout. The checkpoint stores the integers, so it is 4x (int8) or
about 8x (int4) smaller than float32, and decoding reads them as they are.

Symmetric quantization, w ~= q * scale:
- int8: one scale per output channel (the contracted axes reduce to 1),
  q in [-127, 127].
- int4: one scale per `group` consecutive weights along the last contracted
  axis, q in [-8, 7], two per byte (low nibble first). Each group's scale is
  the one of a few clipping ratios of its max that gives the least squared
  error, which beats plain max scaling at 4 bits.

Axes are negative, so the same code reads a kernel with or without leading
axes (scanned layers' 'layers' axis; embedding rows gathered per token).
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lm.errors import UsageError
from lm.model import params as model_params

SCALE_SUFFIX = '_scale'
# Clipping ratios tried per int4 group (1.0 is plain max scaling).
_INT4_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


@dataclasses.dataclass(frozen=True)
class Quant:
  """bits 0: float kernels; 8: int8 per channel; 4: int4 in `group`s."""

  bits: int = 0
  group: int = 64

  @classmethod
  def named(cls, name: str, group: int) -> 'Quant':
    return cls({'none': 0, 'int8': 8, 'int4': 4}[name], group)


NONE = Quant()


def _layout(shape, contract, quant: Quant):
  """(integer shape and dtype, scale shape, group size) of a kernel."""
  shape = tuple(shape)
  axes = [a % len(shape) for a in contract]
  if quant.bits == 8:
    scale = tuple(1 if i in axes else n for i, n in enumerate(shape))
    return shape, jnp.int8, scale, None
  g = axes[-1]
  group = min(quant.group, shape[g])
  if shape[g] % group or group % 2:
    raise UsageError(
        f'int4 groups of {group} do not tile an axis of {shape[g]} weights '
        f'(kernel shape {shape}); set model.quant_group to an even divisor '
        f'of {shape[g]}')
  packed = shape[:g] + (shape[g] // 2,) + shape[g + 1:]
  scale = shape[:g] + (shape[g] // group,) + shape[g + 1:]
  return packed, jnp.uint8, scale, group


def kernel_param(module: nn.Module, name: str, shape, axes, init,
                 param_dtype, contract, quant: Quant):
  """The kernel `name` of `module` as floats of `param_dtype`.

  Float models create it as usual; quantized ones create its integers and
  scales and dequantize them here, inside the caller's compiled computation.
  """
  if not quant.bits:
    # Boxed with how many of its axes it contracts: what the optimizer
    # (lm/model/params.py describe) reads.
    return module.param(name, model_params.kernel_init(init, axes,
                                                       len(contract)),
                        shape, param_dtype)
  q, scale = quantized_param(module, name, shape, axes, param_dtype, contract,
                             quant)
  return dequantize(q, scale, contract[-1], quant).astype(param_dtype)


def quantized_param(module: nn.Module, name: str, shape, axes, param_dtype,
                    contract, quant: Quant):
  """(integers, scales) of a quantized kernel, created under `name` and
  `name + '_scale'`, with the kernel's logical axes (a scale's reduced axes
  are unnamed)."""
  q_shape, q_dtype, scale_shape, _ = _layout(shape, contract, quant)
  scale_axes = tuple(None if n != s else a for a, n, s in zip(
      axes, shape, scale_shape))
  q = module.param(name, nn.with_logical_partitioning(
      lambda _, s, d: jnp.zeros(s, d), axes), q_shape, q_dtype)
  scale = module.param(name + SCALE_SUFFIX, nn.with_logical_partitioning(
      nn.initializers.ones, scale_axes), scale_shape, param_dtype)
  return q, scale


def _unpack_int4(packed, axis):
  """uint8 pairs -> int8 values in [-8, 7], doubling `axis`."""
  low = (packed & 0xF).astype(jnp.int8)
  high = (packed >> 4).astype(jnp.int8)
  both = jnp.stack([low, high], axis=axis % packed.ndim + 1)
  shape = list(packed.shape)
  shape[axis] *= 2
  return ((both ^ 8) - 8).reshape(shape)


def dequantize(q, scale, axis: int, quant: Quant):
  """Integers and scales back to float32 weights (`axis`: the grouped one)."""
  if quant.bits == 8:
    return q.astype(jnp.float32) * scale
  values = _unpack_int4(q, axis).astype(jnp.float32)
  axis %= values.ndim
  groups = scale.shape[axis]
  grouped = values.reshape(values.shape[:axis] + (groups, -1) +
                           values.shape[axis + 1:])
  return (grouped * jnp.expand_dims(scale, axis + 1)).reshape(values.shape)


def quantize(w, contract, quant: Quant):
  """float weights -> (integers, scales) in the layout `kernel_param` reads."""
  w = np.asarray(w, np.float32)
  q_shape, _, scale_shape, group = _layout(w.shape, contract, quant)
  axes = tuple(a % w.ndim for a in contract)
  if quant.bits == 8:
    scale = np.abs(w).max(axis=axes, keepdims=True) / 127
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale
  g = axes[-1]
  grouped = w.reshape(w.shape[:g] + (w.shape[g] // group, group) +
                      w.shape[g + 1:])
  amax = np.abs(grouped).max(axis=g + 1, keepdims=True)
  best_err = np.full(amax.shape, np.inf, np.float32)
  scale = np.ones(amax.shape, np.float32)
  for clip in _INT4_CLIPS:
    trial = np.where(amax > 0, amax * clip / 7, 1.0).astype(np.float32)
    q = np.clip(np.round(grouped / trial), -8, 7)
    err = ((q * trial - grouped) ** 2).sum(axis=g + 1, keepdims=True)
    better = err < best_err
    best_err, scale = np.where(better, err, best_err), np.where(better, trial,
                                                                scale)
  q = np.clip(np.round(grouped / scale), -8, 7).astype(np.int8)
  q = q.reshape(w.shape)
  nibbles = (q & 0xF).astype(np.uint8)
  pairs = nibbles.reshape(w.shape[:g] + (w.shape[g] // 2, 2) + w.shape[g + 1:])
  low = np.take(pairs, 0, axis=g + 1)
  high = np.take(pairs, 1, axis=g + 1)
  packed = (low | (high << 4)).astype(np.uint8)
  assert packed.shape == q_shape
  return packed, np.squeeze(scale, g + 1).reshape(scale_shape)


def quantize_kv(x_BLKH):
  """int8 keys/values with one float32 scale per token and head."""
  scale_BLK1 = jnp.max(jnp.abs(x_BLKH.astype(jnp.float32)), axis=-1,
                       keepdims=True) / 127
  scale_BLK1 = jnp.where(scale_BLK1 > 0, scale_BLK1, 1.0)
  q = jnp.clip(jnp.round(x_BLKH / scale_BLK1), -127, 127).astype(jnp.int8)
  return q, scale_BLK1
