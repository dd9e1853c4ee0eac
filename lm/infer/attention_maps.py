"""What each attention head looks at: the softmax weights of every
attention layer for one batch, for heatmaps (colabs/quickstart.ipynb).

The layers compute attention with a kernel that never holds the weights;
asked through the 'attention_maps' collection (lm/model/attention.py
ATTENTION_MAPS), each layer also computes them from its own queries, keys,
masks and biases, so the maps are the ones the model uses.
"""

import dataclasses
from typing import Any

import flax
import jax
import numpy as np

from lm.errors import UsageError
from lm.model import params as model_params
from lm.model import registry
from lm.model.attention import ATTENTION_MAPS
from lm.model.config import ModelConfig


def attention_maps(model_config: ModelConfig, params: Any,
                   batch: dict) -> dict[str, np.ndarray]:
  """{layer path: [B, heads, queries, keys] weights}, in the model's order.

  `batch` holds the model's inputs as in training ('inputs', and
  'encoder_inputs' for encoder-decoders). Paths name the attention layer,
  e.g. 'block_0/attention'.
  """
  if model_config.scan_layers or model_config.share_layers:
    raise UsageError('attention maps need one module per layer; a model '
                     'with scan_layers or share_layers runs its blocks in a '
                     'scan, which keeps no per-layer weights')
  # Blockwise attention gives the same values, without ever holding them.
  model = registry.build_model(dataclasses.replace(model_config,
                                                   attention='xla'))
  _, sown = model.apply({'params': params},
                        **model_params.model_inputs(model, batch),
                        mutable=[ATTENTION_MAPS])
  maps = {}
  flat = flax.traverse_util.flatten_dict(sown[ATTENTION_MAPS])
  for path, (probs,) in flat.items():  # sow keeps a tuple of calls.
    maps['/'.join(path[:-1])] = np.asarray(jax.device_get(probs))
  return maps
