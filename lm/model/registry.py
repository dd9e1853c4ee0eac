"""The model families: each one registers what the rest of lm needs to know.

A family is one file (lm/model/decoder.py, encoder.py, encoder_decoder.py,
lstm.py) that calls `register` with its Linen module, the data objectives
it trains with, the attention term of its FLOP count, its family-specific
config rules and its Hugging Face layouts. Training, decoding, conversion
and the FLOP count read the registry; none of them names a family. Adding a
family is a new file that registers it (and is imported by
lm/model/__init__.py, or by whoever defines it).
"""

import dataclasses
from typing import Any, Callable

from lm.errors import UsageError

# A ModelConfig (lm/model/config.py, which imports this module to check
# model.family).
Config = Any


@dataclasses.dataclass(frozen=True)
class Family:
  """What lm knows of a family of models."""

  name: str
  # ModelConfig -> the Linen module. Its class names the batch keys it reads
  # (`batch_inputs`: batch key -> argument name).
  module: Callable[[Config], Any]
  # The data.objective values it trains with ('classify' when it takes a
  # classification head, model.num_classes).
  objectives: tuple[str, ...]
  # Layers of attention over the sequence, for the FLOP count's attention
  # term (lm/perf/flops.py).
  attention_layers: Callable[[Config], int]
  # Continues text token by token with a KV cache (lm/infer/generate.py).
  generates: bool = False
  # Its kernels are lm Dense layers that quantization, pruning and LoRA
  # merging rewrite (lm/compress).
  compressible: bool = True
  # Its own config rules: raises UsageError naming the key and the fix.
  check: Callable[[Config], None] | None = None
  # The Hugging Face layouts it reads and writes (lm/model/hf/rules.py
  # Architecture), each under its model_type.
  hf_layouts: dict[str, Any] = dataclasses.field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
  """Adds `family` (a second registration of a name replaces the first, so a
  notebook can redefine one)."""
  _FAMILIES[family.name] = family
  return family


def unregister(name: str) -> None:
  """Removes a family (one a notebook or a test defined for a while)."""
  _FAMILIES.pop(name, None)


def get(name: str) -> Family:
  if name not in _FAMILIES:
    raise UsageError(f'model.family={name!r} is not one of {names()}')
  return _FAMILIES[name]


def names() -> list[str]:
  return sorted(_FAMILIES)


def hf_layouts() -> dict[str, Any]:
  """{Hugging Face model_type: its Architecture} over every family."""
  return {model_type: layout for family in _FAMILIES.values()
          for model_type, layout in family.hf_layouts.items()}


def build_model(config: Config):
  """The Linen module of `config`'s family."""
  return get(config.family).module(config)
