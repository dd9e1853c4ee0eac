"""Sentence embeddings from an encoder: mean of the last hidden states over
real tokens, L2-normalized (what sentence-transformers does for MiniLM)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm.data import tokenizers
from lm.errors import UsageError
from lm.model import registry
from lm.model.config import ModelConfig


def embed_texts(model_config: ModelConfig, params, tokenizer,
                texts: list[str], batch_size: int = 32) -> np.ndarray:
  """[len(texts), d_model] unit vectors, one per text."""
  if model_config.family != 'encoder':
    raise UsageError('sentence embeddings come from encoder models (BERT, '
                     f'MiniLM); this is a {model_config.family} model')
  if not texts or any(not t.strip() for t in texts):
    raise UsageError('every text to embed needs some non-blank content')
  limit = model_config.context_limit
  encoded = []
  for number, text in enumerate(texts, 1):
    ids = tokenizers.encode_sequence(tokenizer, text)
    if len(ids) > limit:
      raise UsageError(f'text {number} is {len(ids)} tokens long; the model '
                       f'takes at most {limit} (model.max_len): shorten it')
    encoded.append(ids)
  length = max(len(ids) for ids in encoded)
  model = registry.build_model(model_config)
  out = []
  for start in range(0, len(encoded), batch_size):
    rows = encoded[start:start + batch_size]
    tokens = np.full((len(rows), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, ids in enumerate(rows):
      tokens[i, :len(ids)], mask[i, :len(ids)] = ids, True
    out.append(np.asarray(_mean_pooled(model, params, tokens, mask)))
  return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=0)
def _mean_pooled(model, params, tokens_BL, mask_BL):
  hidden_BLD = model.apply({'params': params}, tokens_BL,
                           padding_mask_BL=mask_BL, all_outputs=True)['hidden']
  weights_BL1 = mask_BL[..., None].astype(hidden_BLD.dtype)
  mean_BD = (hidden_BLD * weights_BL1).sum(1) / weights_BL1.sum(1)
  return mean_BD / jnp.maximum(jnp.linalg.norm(mean_BD, axis=-1,
                                               keepdims=True), 1e-12)
