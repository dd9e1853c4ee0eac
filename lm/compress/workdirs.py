"""Compression applied to a workdir: reads one, writes a new one.

The new workdir is a complete inference workdir (config.json, tokenizer,
params-only checkpoint at the source's step) that experiments/generate.py,
evaluate.py and compress.py --report read like any other; the source is
never changed.
"""

import dataclasses
import os

import jax
import ml_collections

from lm import checkpoint
from lm import models
from lm.compress import quantize
from lm.errors import UsageError


def _derived_config(source: str, model_config: models.ModelConfig,
                    output: str, defaults: ml_collections.ConfigDict | None
                    ) -> ml_collections.ConfigDict:
  """The source's config with `model_config`, its tokenizer moved along."""
  config = checkpoint.load_config(source, defaults)
  config.model = dataclasses.asdict(model_config)
  tokenizer = config.data.tokenizer
  if os.path.isdir(tokenizer) and os.path.samefile(tokenizer, source):
    config.data.tokenizer = os.path.abspath(output)
  return config


def quantize_workdir(source: str, output: str, quant: str, group: int = 64,
                     kv_cache: str = 'float',
                     defaults: ml_collections.ConfigDict | None = None
                     ) -> models.ModelConfig:
  """Writes `output`: the source's latest params quantized to `quant`."""
  checkpoint.check_new_directory(output)
  restored = checkpoint.restore(source)
  if restored.model_config.quant != 'none':
    raise UsageError(f'{source} is already quantized '
                     f'(model.quant={restored.model_config.quant!r}); '
                     'quantize the float workdir it came from')
  if restored.model_config.family == 'lstm':
    raise UsageError('quantization applies to Transformer workdirs; '
                     f'{source} holds the LSTM baseline')
  model_config = dataclasses.replace(restored.model_config, quant=quant,
                                     quant_group=group, kv_cache=kv_cache)
  model_config.validate()
  abstract = models.abstract_params(models.build_model(model_config))
  params = jax.device_get(quantize.quantize_params(
      restored.params, abstract, model_config.quantization))
  config = _derived_config(source, model_config, output, defaults)
  checkpoint.write_params_workdir(output, config, params, restored.tokenizer,
                                  restored.step)
  return model_config
