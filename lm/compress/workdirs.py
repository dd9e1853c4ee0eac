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

from lm import restore
from lm.compress import deep_compression
from lm.compress import lora
from lm.compress import prune
from lm.compress import quantize
from lm.errors import UsageError
from lm.io import config_file
from lm.io import layout
from lm.io import outputs
from lm.io import paths
from lm.io import train_data_file
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig


def _write(source: str, output: str, restored: restore.Restored,
           model_config: ModelConfig, params,
           defaults: ml_collections.ConfigDict | None,
           extra_files: dict[str, bytes] | None = None, **sections) -> None:
  """`output`: the source's config with `model_config` (and `sections`
  replaced), its tokenizer moved along, and `params` at the source's step."""
  config = config_file.load_config(source, defaults)
  config.model = dataclasses.asdict(model_config)
  for name, values in sections.items():
    config[name] = ml_collections.ConfigDict(values)
  tokenizer = config.data.tokenizer
  if os.path.isdir(tokenizer) and os.path.samefile(tokenizer, source):
    config.data.tokenizer = os.path.abspath(output)
  # A DP-SGD run's privacy is reported from its train examples' count.
  count = train_data_file.train_examples(source)
  if count is not None:
    extra_files = {**(extra_files or {}), layout.TRAIN_DATA:
                   train_data_file.encode(config.data.name, count).encode()}
  outputs.write_params_workdir(output, config, jax.device_get(params),
                               restored.tokenizer, restored.step, extra_files)


def _restore_float(source: str, output: str) -> restore.Restored:
  paths.new_directory(output, source=source)
  restored = restore.workdir(source)
  if restored.model_config.quant != 'none':
    raise UsageError(f'{source} is already quantized '
                     f'(model.quant={restored.model_config.quant!r}); '
                     'compress the float workdir it came from')
  family = registry.get(restored.model_config.family)
  if not family.compressible:
    raise UsageError(f'compression rewrites lm Dense layers; {source} holds '
                     f'a {family.name} model, which has none')
  return restored


def quantize_workdir(source: str, output: str, quant: str, group: int = 64,
                     kv_cache: str = 'float',
                     defaults: ml_collections.ConfigDict | None = None
                     ) -> ModelConfig:
  """Writes `output`: the source's latest params quantized to `quant`."""
  restored = _restore_float(source, output)
  model_config = dataclasses.replace(restored.model_config, quant=quant,
                                     quant_group=group, kv_cache=kv_cache)
  model_config.validate()
  abstract = model_params.abstract_params(
      registry.build_model(model_config))
  params = quantize.quantize_params(restored.params, abstract,
                                    model_config.quantization)
  _write(source, output, restored, model_config, params, defaults)
  return model_config


def prune_workdir(source: str, output: str, config: prune.PruneConfig,
                  defaults: ml_collections.ConfigDict | None = None) -> float:
  """Writes `output`: the source's latest params pruned at once to the
  config's final sparsity; returns the sparsity of the pruned kernels.
  Its config's `prune` section says how, so fine-tuning it with the same
  pattern (init_from) keeps the zeros."""
  restored = _restore_float(source, output)
  params = prune.prune_params(restored.params, config,
                              prune.input_axes(restored.model_config))
  _write(source, output, restored, restored.model_config, params, defaults,
         prune=dataclasses.asdict(config))
  return prune.sparsity_of(params, config)


def merge_lora_workdir(source: str, output: str,
                       defaults: ml_collections.ConfigDict | None = None
                       ) -> ModelConfig:
  """Writes `output`: the source's LoRA adapters merged into its kernels."""
  restored = _restore_float(source, output)
  params, model_config = lora.merge(restored.params, restored.model_config)
  _write(source, output, restored, model_config, params, defaults)
  return model_config


def deep_compress_workdir(source: str, output: str, bits: int = 5,
                          targets: str = deep_compression.TARGETS,
                          defaults: ml_collections.ConfigDict | None = None
                          ) -> dict:
  """Writes `output`: the source's params Deep-Compressed (prune it first,
  e.g. with --method=prune or config.prune) into deep_compression.npz,
  beside a checkpoint of the float params that file decodes to."""
  restored = _restore_float(source, output)
  data, stats = deep_compression.encode(restored.params, targets, bits)
  params = deep_compression.decode(data)
  _write(source, output, restored, restored.model_config, params, defaults,
         extra_files={layout.DEEP_COMPRESSION: data})
  return stats
