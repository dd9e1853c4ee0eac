"""Beam search (and greedy search) for encoder-decoder models, KV-cached.

Beam search keeps `beam_size` hypotheses per source (1 is greedy) and
returns the one with the best log-probability divided by GNMT's length
penalty ((5 + length) / 6) ** length_penalty; EOS is not returned. EOS is
not allowed before `min_new_tokens` tokens (1 by default): an EOS at the
first step often outscores every real hypothesis, which left summaries
empty.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UsageError
from lm.kernels import matmul


def translate(model: nn.Module, params: Any, sources: list[list[int]], *,
              max_new_tokens: int, bos_id: int, eos_id: int, pad_id: int = 0,
              beam_size: int = 1, length_penalty: float = 0.6,
              min_new_tokens: int = 1,
              source_len: int | None = None) -> list[list[int]]:
  """Writes a target for each source with an encoder-decoder model.

  Beam search keeps `beam_size` hypotheses per source (1 is greedy) and
  returns the one with the best log-probability divided by GNMT's length
  penalty ((5 + length) / 6) ** length_penalty; EOS is not returned, nor
  allowed before `min_new_tokens` tokens. Sources are padded to the longest, or to `source_len` (a fixed shape).
  """
  if beam_size < 1 or max_new_tokens < 1:
    raise UsageError(f'beam_size and max_new_tokens must be >= 1, got '
                     f'{beam_size} and {max_new_tokens}')
  if not 0 <= min_new_tokens <= max_new_tokens:
    raise UsageError(f'min_new_tokens must be in [0, max_new_tokens='
                     f'{max_new_tokens}], got {min_new_tokens}')
  if not sources or any(len(s) == 0 for s in sources):
    raise UsageError('every source needs at least one token; got an empty one')
  source_len = max(source_len or 0, max(len(s) for s in sources))
  tokens_BS = np.full((len(sources), source_len), pad_id, np.int32)
  mask_BS = np.zeros((len(sources), source_len), bool)
  for row, source in enumerate(sources):
    tokens_BS[row, :len(source)] = source
    mask_BS[row, :len(source)] = True
  tokens_BN, count_B = _beam_search_jit(
      model, max_new_tokens, bos_id, eos_id, beam_size, float(length_penalty),
      min_new_tokens, params, tokens_BS, mask_BS)
  tokens_BN, count_B = np.asarray(tokens_BN), np.asarray(count_B)
  return [tokens_BN[row, :count_B[row]].tolist() for row in range(len(sources))]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _beam_search_jit(model, max_len, bos_id, eos_id, beam_size, length_penalty,
                     min_len, params, encoder_tokens_BS, encoder_mask_BS):
  batch, beams = encoder_tokens_BS.shape[0], beam_size
  rows = batch * beams
  encoded_BSD = model.apply({'params': params}, encoder_tokens_BS,
                            encoder_mask_BS, method='encode')
  # Row b * beams + k holds hypothesis k of source b.
  encoded_RSD = jnp.repeat(encoded_BSD, beams, axis=0)
  mask_RS = jnp.repeat(encoder_mask_BS, beams, axis=0)
  cache = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda: model.init(
          jax.random.key(0), encoded_RSD, jnp.zeros((rows, max_len),
                                                    jnp.int32),
          encoder_mask_BS=mask_RS, decode=True,
          method='decode_logits')['cache']))

  def gather_beams(x_BK, beam_BK):
    index = beam_BK.reshape(beam_BK.shape + (1,) * (x_BK.ndim - 2))
    return jnp.take_along_axis(x_BK, index, axis=1)

  def cond(carry):
    i, _, _, _, finished_BK, _, _ = carry
    return (i < max_len) & ~jnp.all(finished_BK)

  def body(carry):
    i, tokens_BKN, scores_BK, last_R, finished_BK, lengths_BK, cache = carry
    with matmul.decoding_loop():
      logits_R1V, updated = model.apply(
          {'params': params, 'cache': cache}, encoded_RSD, last_R[:, None],
          jnp.full((rows, 1), i), mask_RS, decode=True,
          method='decode_logits', mutable=['cache'])
    logprobs_BKV = jax.nn.log_softmax(logits_R1V[:, 0]).reshape(
        batch, beams, -1)
    vocab = logprobs_BKV.shape[-1]
    logprobs_BKV = logprobs_BKV.at[..., eos_id].set(
        jnp.where(i < min_len, -jnp.inf, logprobs_BKV[..., eos_id]))
    # A finished hypothesis can only repeat EOS, at no cost: it keeps its
    # score and competes with the live ones as it is.
    eos_only_V = jnp.full(vocab, -jnp.inf).at[eos_id].set(0.0)
    logprobs_BKV = jnp.where(finished_BK[..., None], eos_only_V, logprobs_BKV)
    scores_BK, index_BK = jax.lax.top_k(
        (scores_BK[..., None] + logprobs_BKV).reshape(batch, beams * vocab),
        beams)
    beam_BK, token_BK = index_BK // vocab, (index_BK % vocab).astype(jnp.int32)
    tokens_BKN = gather_beams(tokens_BKN, beam_BK).at[:, :, i].set(token_BK)
    was_finished_BK = gather_beams(finished_BK, beam_BK)
    lengths_BK = gather_beams(lengths_BK, beam_BK) + ~was_finished_BK
    finished_BK = was_finished_BK | (token_BK == eos_id)
    source_rows_R = (jnp.arange(batch)[:, None] * beams + beam_BK).reshape(-1)
    cache = jax.tree.map(lambda c: c[source_rows_R], updated['cache'])
    return (i + 1, tokens_BKN, scores_BK, token_BK.reshape(-1), finished_BK,
            lengths_BK, cache)

  # Only hypothesis 0 is live at first, so the first step's beams differ.
  scores_BK = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)[None].repeat(
      batch, axis=0)
  carry = (jnp.int32(0), jnp.zeros((batch, beams, max_len), jnp.int32),
           scores_BK, jnp.full(rows, bos_id, jnp.int32),
           jnp.zeros((batch, beams), bool), jnp.zeros((batch, beams),
                                                      jnp.int32), cache)
  _, tokens_BKN, scores_BK, _, _, lengths_BK, _ = jax.lax.while_loop(
      cond, body, carry)
  normalized_BK = scores_BK / ((5.0 + lengths_BK) / 6.0) ** length_penalty
  best_B = jnp.argmax(normalized_BK, axis=1)
  tokens_BN = tokens_BKN[jnp.arange(batch), best_B]
  is_eos_BN = tokens_BN == eos_id
  count_B = jnp.where(jnp.any(is_eos_BN, axis=1),
                      jnp.argmax(is_eos_BN, axis=1), max_len)
  return tokens_BN, count_B
