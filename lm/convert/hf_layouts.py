"""Which Hugging Face layout reads or writes a checkpoint: the layouts every
family registers (lm/model/registry.py), looked up by model_type or by what
an lm config can be saved as."""

from lm.errors import UsageError
from lm.model import registry
from lm.model.config import ModelConfig
from lm.model.hf.rules import Architecture


def get_architecture(model_type: str) -> Architecture:
  layouts = registry.hf_layouts()
  if not isinstance(model_type, str) or model_type not in layouts:
    raise UsageError(f'model_type {model_type!r} is not supported; lm '
                     f'imports {sorted(layouts)}')
  return layouts[model_type]


def architecture_of(config: ModelConfig) -> str:
  """The model_type an lm config can be saved as, or one error saying why
  none of its family's layouts fits."""
  family = registry.get(config.family)
  reasons = []
  for name, layout in family.hf_layouts.items():
    wrong = []
    for key, value in layout.requires.items():
      test, wanted = (value if isinstance(value, tuple)
                      else (lambda v, value=value: v == value, repr(value)))
      if not test(getattr(config, key)):
        wrong.append(f'{key}={getattr(config, key)!r} (needs {wanted})')
    if not wrong:
      return name
    reasons.append(f'{name}: ' + ', '.join(wrong))
  raise UsageError('no Hugging Face layout matches this model; '
                   + ('; '.join(reasons)
                      or f'family {config.family!r} has none'))
