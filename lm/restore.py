"""A workdir read back for use: its model config, latest params and
tokenizer (what generation, evaluation, conversion, compression and
fine-tuning start from)."""

import dataclasses
from typing import Any

from lm.data import tokenizers
from lm.io import checkpoint
from lm.io import config_file
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig


@dataclasses.dataclass
class Restored:
  """What inference needs from a workdir."""

  model_config: ModelConfig
  params: Any
  step: int
  tokenizer: tokenizers.Tokenizer


def workdir(path: str) -> Restored:
  """The model config, latest params and tokenizer the workdir at `path`
  holds."""
  model_config = ModelConfig.from_config(config_file.load_config(path).model)
  tokenizer = tokenizers.load_tokenizer(path)
  tokenizers.check_fits(tokenizer, model_config.vocab_size, path)
  params, step = checkpoint.load_params(
      path, model_params.abstract_params(registry.build_model(model_config)))
  return Restored(model_config, params, step, tokenizer)
