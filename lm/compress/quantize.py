"""Quantizing a float model's params into a quantized model's layout, and
back (lm/model/quantized.py defines the layout)."""

import dataclasses
from typing import Any

import jax
import numpy as np

from lm.errors import UsageError
from lm.model.quantized import SCALE_SUFFIX
from lm.model.quantized import Quant
from lm.model.quantized import dequantize
from lm.model.quantized import quantize


def quantize_params(params: Any, abstract_quantized: Any, quant: Quant
                    ) -> Any:
  """A float model's params in the layout of the quantized model's.

  `abstract_quantized` (the quantized model's abstract params) says
  which kernels are quantized: those with a `<name>_scale` beside them. Each
  one's contracted axes follow from the shapes: int8 scales have size 1 on
  them; an int4 kernel is halved on its grouped axis.
  """
  if not isinstance(abstract_quantized, dict):
    return params
  out = {}
  for key, abstract in abstract_quantized.items():
    if key.endswith(SCALE_SUFFIX):
      continue
    scale = abstract_quantized.get(key + SCALE_SUFFIX)
    if scale is None:
      if key not in params:
        raise UsageError(f'the float params have no {key!r}; quantize the '
                         'params of the same model')
      out[key] = quantize_params(params[key], abstract, quant)
      continue
    w = np.asarray(jax.device_get(params[key]))
    # Each kernel's own width: int4 models keep embeddings at int8.
    quant = _width_of(abstract.dtype, quant)
    if quant.bits == 8:
      contract = tuple(i - w.ndim for i in range(w.ndim)
                       if scale.shape[i] == 1 and w.shape[i] != 1)
    else:
      contract = tuple(i - w.ndim for i in range(w.ndim)
                       if abstract.shape[i] != w.shape[i])
    out[key], out[key + SCALE_SUFFIX] = quantize(w, contract or (-1,), quant)
  return out


def dequantize_params(params: Any, abstract_float: Any, quant: Quant) -> Any:
  """A quantized model's params as the float model's (`abstract_float`, its
  abstract_params), each kernel replaced by q * scale: what the
  integers hold, e.g. to check them or to export them."""
  if not isinstance(params, dict):
    return params
  out = {}
  for key, abstract in abstract_float.items():
    scale = params.get(key + SCALE_SUFFIX)
    if scale is None:
      out[key] = dequantize_params(params[key], abstract, quant)
      continue
    q = params[key]
    quant = _width_of(q.dtype, quant)
    # int4: the grouped axis is the one packing halved.
    axis = next((i for i in range(q.ndim) if q.shape[i] != abstract.shape[i]),
                -1)
    out[key] = dequantize(q, scale, axis, quant)
  return out


def _width_of(dtype, quant: Quant) -> Quant:
  """int8 integers are 8-bit, packed uint8 ones 4-bit, whatever the model's
  setting (its embeddings stay at 8 bits under int4)."""
  return dataclasses.replace(quant, bits=8 if dtype == np.int8 else 4)
