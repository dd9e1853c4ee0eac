"""Real checkpoints in and out: Hugging Face safetensors and GGUF.

  import_checkpoint(source, workdir, base_config)  ->  a workdir like any
      trained one: config.json, the tokenizer, and an orbax checkpoint
      (step 0, params only; fine-tune from it with --config.init_from)
  export_workdir(workdir, output)     ->  model.safetensors + config.json
      (+ tokenizer files) that `transformers` loads

The format is read from the source: a file starting with b'GGUF' is GGUF
(Llama architecture); a `.safetensors` file, or a directory holding them,
is a Hugging Face checkpoint whose config.json names the architecture
(bert, gpt2, llama, t5: the layouts the model families register). Everything
is read and checked -- tensors, shapes,
the tokenizer against the embedding -- before anything is written, and the
workdir appears in one rename, so a failed import leaves nothing behind.
"""

import dataclasses
import glob
import json
import os

import flax.traverse_util
import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy

from lm import restore
from lm.convert import gguf_file
from lm.convert import hf_layouts
from lm.convert import tokenizer_files
from lm.data import tokenizers
from lm.errors import UsageError
from lm.io import json_files
from lm.io import outputs
from lm.io import paths
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.model.hf import rules

_WEIGHTS_FILE = 'model.safetensors'
_HF_CONFIG_FILE = 'config.json'


@dataclasses.dataclass
class Imported:
  model_config: ModelConfig
  params: dict
  tokenizer: tokenizers.Tokenizer
  source_format: str

  @property
  def num_params(self) -> int:
    return model_params.count_params(self.params)


def detect_format(source: str) -> str:
  """'gguf' or 'safetensors', or one error saying what was expected."""
  expected = ('expected a GGUF file, or a .safetensors file or directory '
              f'with {_HF_CONFIG_FILE} beside it')
  if source and not os.path.exists(source):
    raise UsageError(f'{source}: no such file or directory; {expected}')
  paths.source(source)
  if os.path.isdir(source):
    if glob.glob(os.path.join(source, '*.safetensors')):
      return 'safetensors'
    raise UsageError(f'{source} holds no .safetensors file; {expected}')
  with open(source, 'rb') as f:
    magic = f.read(4)
  if magic == gguf_file.MAGIC:
    return 'gguf'
  if source.endswith('.safetensors'):
    return 'safetensors'
  raise UsageError(f'{source} is not a checkpoint lm can import; {expected}')


def read_checkpoint(source: str, tokenizer_dir: str | None = None
                    ) -> Imported:
  """Reads and checks a checkpoint; writes nothing."""
  kind = detect_format(source)
  if kind == 'gguf':
    hf_config, tensors, tokenizer = gguf_file.read_llama(source)
  else:
    directory = source if os.path.isdir(source) else os.path.dirname(source)
    hf_config = _read_hf_config(directory)
    tensors = _read_safetensors(
        [source] if not os.path.isdir(source)
        else sorted(glob.glob(os.path.join(source, '*.safetensors'))))
    tokenizer = tokenizer_files.find_tokenizer(tokenizer_dir or directory)
  if tokenizer_dir and kind == 'gguf':
    tokenizer = tokenizer_files.find_tokenizer(tokenizer_dir)
  for name, tensor in tensors.items():
    if not np.isfinite(tensor).all():
      raise UsageError(f'{source}: the tensor {name} holds NaN or infinite '
                       'values; the checkpoint is damaged')
  arch = hf_layouts.get_architecture(hf_config.get('model_type'))
  try:
    model_config = ModelConfig(**arch.config_from_hf(hf_config,
                                                     set(tensors)))
    model_config.validate()
  except KeyError as e:
    raise UsageError(f"{source}'s config lacks the key {e}") from e
  except (TypeError, ValueError) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(f"{source}'s config has a value of the wrong kind: "
                     f'{str(e)[:200]}') from e
  layers = model_config.num_layers + model_config.num_decoder_layers
  if layers > len(tensors):
    raise UsageError(f'{source} declares {layers} layers but holds only '
                     f'{len(tensors)} tensors; its config does not match '
                     'its weights')
  try:
    params = rules.params_from_hf(arch.rules(model_config), tensors)
  except UsageError:
    raise
  except ValueError as e:  # a tensor that cannot take the config's shape
    raise UsageError(f'{source}: the config does not match the weights '
                     f'({str(e)[:200]})') from e
  _check_shapes(model_config, params)
  for role in ('pad_id', 'bos_id', 'eos_id'):
    token = getattr(tokenizer, role, None)
    if token is not None and not 0 <= token < tokenizer.vocab_size:
      raise UsageError(f'{source}: the tokenizer\'s {role} is {token}, '
                       f'outside its {tokenizer.vocab_size} tokens; the '
                       'tokenizer is damaged')
  tokenizers.check_fits(tokenizer, model_config.vocab_size,
                        f"{source} (pass the model's own with --tokenizer)")
  return Imported(model_config, params, tokenizer, kind)


IMPORTED_EVAL_BATCH_SIZE = 4


def import_checkpoint(source: str, workdir: str,
                      base_config: ml_collections.ConfigDict,
                      tokenizer_dir: str | None = None) -> Imported:
  """Imports `source` into a new `workdir` (which must not hold anything).

  The workdir's config.json is `base_config` (configs/base.py's defaults)
  with the imported model section and tokenizer.
  """
  paths.new_directory(workdir, 'new workdir')
  imported = read_checkpoint(source, tokenizer_dir)
  config = ml_collections.ConfigDict(base_config.to_dict())
  config.model = dataclasses.asdict(imported.model_config)
  # The tokenizer travels with the workdir; data.tokenizer names it.
  # Imported models are large for a CPU: a few rows per scored batch keep
  # `evaluate --max_batches=N` to seconds.
  config.data.update(tokenizer=os.path.abspath(workdir),
                     vocab_size=imported.tokenizer.vocab_size,
                     eval_batch_size=IMPORTED_EVAL_BATCH_SIZE)
  outputs.write_params_workdir(workdir, config, imported.params,
                               imported.tokenizer)
  return imported


def export_workdir(workdir: str, output: str) -> str:
  """Writes the workdir's latest params in Hugging Face layout; returns arch."""
  paths.new_directory(output, source=workdir)
  restored = restore.workdir(workdir)
  arch_name = hf_layouts.architecture_of(restored.model_config)
  arch = registry.get(restored.model_config.family).hf_layouts[arch_name]
  hf_config = arch.config_to_hf(restored.model_config)
  hf_config['torch_dtype'] = 'float32'
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), restored.params)
  tensors = rules.params_to_hf(arch.rules(restored.model_config), params)
  with outputs.building(output) as staging:
    safetensors.numpy.save_file(tensors, os.path.join(staging, _WEIGHTS_FILE),
                                metadata={'format': 'pt'})
    with open(os.path.join(staging, _HF_CONFIG_FILE), 'w') as f:
      json.dump(hf_config, f, indent=2)
    restored.tokenizer.save(staging)
  return arch_name


def _read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, _HF_CONFIG_FILE)
  if not os.path.exists(path):
    raise UsageError(f'{directory} has no {_HF_CONFIG_FILE}; a safetensors '
                     'checkpoint needs the config.json saved with it')
  return json_files.load_object(path, 'model config')


def _read_safetensors(paths: list[str]) -> dict[str, np.ndarray]:
  """float32 numpy arrays of every tensor (bf16 and fp16 are widened)."""
  tensors = {}
  for path in paths:
    try:
      # 'flax' reads bfloat16, which plain numpy cannot represent.
      with safetensors.safe_open(path, framework='flax') as f:
        for name in f.keys():
          tensors[name] = np.asarray(f.get_tensor(name), np.float32)
    except (safetensors.SafetensorError, OSError, ValueError,
            TypeError) as e:
      raise UsageError(f'{path} is not a readable safetensors file: {e}'
                       ) from e
  return tensors


def _check_shapes(model_config: ModelConfig, params: dict) -> None:
  """The params are exactly what the model builds: no more, no fewer."""
  abstract = model_params.abstract_params(registry.build_model(model_config))
  want = flax.traverse_util.flatten_dict(abstract, sep='/')
  have = flax.traverse_util.flatten_dict(params, sep='/')
  for name in sorted(set(want) | set(have)):
    if name not in have:
      raise UsageError(f'the checkpoint gives no value for {name}')
    if name not in want:
      raise UsageError(f'the checkpoint has {name}, which the model lacks')
    if tuple(want[name].shape) != tuple(have[name].shape):
      raise UsageError(
          f'{name} has shape {tuple(have[name].shape)} in the checkpoint but '
          f'the config implies {tuple(want[name].shape)}; the config.json '
          'does not match the weights')
