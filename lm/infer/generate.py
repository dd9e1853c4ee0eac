"""Sampling from a decoder-only model: jit-compiled prefill + KV-cache decode.

Prompts of different lengths share a batch: they are right-padded, each row
keeps its own position, and the cache is written at each row's positions.
Prefill runs the padded prompts in chunks of PREFILL_CHUNK tokens (one
call for short prompts); then a `lax.while_loop` feeds one token per row
per step until every row has produced EOS or `max_new_tokens` tokens.
"""

import contextlib
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import sharding
from lm.errors import UsageError
from lm.infer.sampling import SamplingConfig
from lm.infer.sampling import check_seed
from lm.infer.sampling import sample
from lm.kernels import matmul
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig


def complete(model_config: ModelConfig, params: Any, tokenizer,
             prompts: list[str], sampling: SamplingConfig, seed: int = 0,
             mesh: jax.sharding.Mesh | None = None, jit: bool = True,
             stream=None) -> list[str]:
  """Text in, text out: each prompt's continuation (without the prompt).

  With a `mesh` the parameters are laid out on it as in training (tensor
  parallelism splits heads and MLP units over its 'tensor' axis) and the
  compiled decode runs on all its devices. `stream(text)`, if given, is
  called with each new piece of the first prompt's continuation as it is
  decoded.
  """
  if not registry.get(model_config.family).generates:
    raise UsageError(f'sampling continues text with decoder-only models; '
                     f'this is a {model_config.family} model')
  if any(not p for p in prompts):
    raise UsageError('a prompt is empty; give some text to continue')
  check_seed(seed)
  model = registry.build_model(model_config)
  context = contextlib.nullcontext()
  if mesh is not None:
    sharding.check_batch(len(prompts), mesh, 'the number of prompts')
    params = jax.device_put(params, sharding.logical_shardings(
        model_params.logical_abstract_params(model), mesh))
    context = sharding.activation_rules(mesh)
  with context:
    new_tokens = generate(
        model, params, [tokenizer.encode(p) for p in prompts],
        sampling=sampling, rng=jax.random.PRNGKey(seed),
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
        max_len=model_config.context_limit, jit=jit,
        on_tokens=stream and TextStream(tokenizer, stream))
  return [tokenizer.decode(t) for t in new_tokens]


def generate(model: nn.Module, params: Any, prompts: list[list[int]], *,
             sampling: SamplingConfig, rng: jax.Array, eos_id: int | None,
             pad_id: int = 0, max_len: int | None = None,
             prompt_len: int | None = None, jit: bool = True,
             on_tokens=None) -> list[list[int]]:
  """Continues each prompt; returns the new tokens of each (EOS excluded).

  Prompts are padded to the longest, or to `prompt_len` (a fixed shape that
  batch after batch reuses one compiled program). `jit=False` runs the same
  code op by op, as eager ("dynamic graph") frameworks do: the while loop
  becomes a Python loop and each operation is dispatched on its own.
  `on_tokens(i, tokens_B)`, if given, is called on the host with the i-th
  new token of every row as soon as it is sampled (rows already done repeat
  EOS).
  """
  sampling.validate(model.config.vocab_size)
  if not prompts or any(len(p) == 0 for p in prompts):
    raise UsageError('every prompt needs at least one token; got an empty one')
  prompt_len = max(prompt_len or 0, max(len(p) for p in prompts))
  cache_len = prompt_len + sampling.max_new_tokens
  if max_len is not None and cache_len > max_len:
    raise UsageError(
        f'prompt ({prompt_len} tokens) + max_new_tokens '
        f'({sampling.max_new_tokens}) = {cache_len} exceeds the model\'s '
        f'context of {max_len} tokens; shorten one of them')
  tokens_BP = np.full((len(prompts), prompt_len), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    tokens_BP[row, :len(prompt)] = prompt
  lengths_B = np.array([len(p) for p in prompts], np.int32)
  with contextlib.nullcontext() if jit else jax.disable_jit():
    new_BN, count_B = generate_program(model, sampling,
                                       -1 if eos_id is None else eos_id,
                                       on_tokens, params, tokens_BP,
                                       lengths_B, rng)
  new_BN, count_B = np.asarray(new_BN), np.asarray(count_B)
  return [new_BN[row, :count_B[row]].tolist() for row in range(len(prompts))]


# Each decoding step reads the whole KV cache, so the loop runs in phases
# whose cache holds only the positions written so far (rounded up to the
# phase's end): a step reads fewer positions on average. Every phase
# compiles its own loop body, so a short generation keeps one phase.
_PHASES = 4
_MIN_PHASE_STEPS = 32


def cache_phases(prompt_len: int, max_new_tokens: int
                 ) -> list[tuple[int, int]]:
  """(cache length, last step) of each decoding phase.

  The prefill samples token 0; step i (1 to max_new_tokens - 1) writes
  position prompt_len + i - 1 at most, so a phase whose last step is i needs
  a cache of prompt_len + i positions.
  """
  steps = max_new_tokens - 1
  count = max(1, min(_PHASES, (steps + _MIN_PHASE_STEPS // 2)
                     // _MIN_PHASE_STEPS))
  width = -(-steps // count)
  last_steps = [min(width * (k + 1), steps) for k in range(count)]
  return [(prompt_len + last, last) for last in last_steps]


# Prompts are prefilled this many tokens at a time: a chunk's scores
# against the cache are [chunk, cache], so memory grows linearly with the
# prompt, not with its square.
PREFILL_CHUNK = 512


def prefill(model: nn.Module, params: Any, tokens_BP, lengths_B,
            cache_len: int, chunk: int = PREFILL_CHUNK):
  """Runs the right-padded prompts into a new cache of `cache_len`
  positions, `chunk` tokens at a time; returns each prompt's last token's
  logits [B, V] (the only ones projected onto the vocabulary) and the
  cache."""
  batch, prompt_len = tokens_BP.shape
  cache = init_cache(model, batch, cache_len)

  def run(cache, start, tokens_BC):
    """One chunk at `start`: the cache after it, the logits at each row's
    last token (where that falls in the chunk) and whether it does."""
    length = tokens_BC.shape[1]
    positions_BC = start + jnp.broadcast_to(jnp.arange(length),
                                            tokens_BC.shape)
    last_B = lengths_B - 1 - start
    logits_B1V, updated = model.apply(
        {'params': params, 'cache': cache}, tokens_BC, positions_BC,
        decode=True, logits_at_B=jnp.clip(last_B, 0, length - 1),
        mutable=['cache'])
    return updated['cache'], logits_B1V[:, 0], (last_B >= 0) & (
        last_B < length)

  # Whole chunks through one compiled scan, then the last 1..chunk tokens.
  whole = (prompt_len - 1) // chunk
  last_BV = None
  if whole:
    chunks_NBC = jnp.swapaxes(tokens_BP[:, :whole * chunk].reshape(
        batch, whole, chunk), 0, 1)

    def step(carry, inputs):
      cache, last_BV = carry
      index, tokens_BC = inputs
      cache, logits_BV, here_B = run(cache, index * chunk, tokens_BC)
      return (cache, jnp.where(here_B[:, None], logits_BV, last_BV)), None

    zeros_BV = jnp.zeros((batch, model.config.vocab_size), jnp.float32)
    (cache, last_BV), _ = jax.lax.scan(
        step, (cache, zeros_BV), (jnp.arange(whole), chunks_NBC))
  cache, logits_BV, here_B = run(cache, whole * chunk,
                                 tokens_BP[:, whole * chunk:])
  if last_BV is not None:
    logits_BV = jnp.where(here_B[:, None], logits_BV, last_BV)
  return logits_BV, cache


def _sample(logits_BV, rng, settings: SamplingConfig):
  """sampling.sample with one setting for every row and a key per row."""
  return sample(logits_BV, jax.random.split(rng, logits_BV.shape[0]),
                settings.temperature, settings.top_k, settings.top_p)[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def generate_program(model, sampling, eos_id, on_tokens, params, tokens_BP,
                     lengths_B, rng):
  """The compiled program of `generate`: prefill, then the decoding loop.

  `on_tokens` (static; None for none) receives each step's tokens on the
  host through a callback, which is all streaming costs.
  """

  def emit(i, token_B):
    if on_tokens is not None:
      jax.debug.callback(on_tokens, i, token_B)

  batch, prompt_len = tokens_BP.shape
  max_new = sampling.max_new_tokens
  phases = cache_phases(prompt_len, max_new)

  def step(cache, tokens_BL, positions_BL):
    with matmul.decoding_loop():
      logits_BLV, updated = model.apply(
          {'params': params, 'cache': cache}, tokens_BL, positions_BL,
          decode=True, mutable=['cache'])
    return logits_BLV, updated['cache']

  last_BV, cache = prefill(model, params, tokens_BP, lengths_B,
                           phases[0][0])
  rng, first_rng = jax.random.split(rng)
  token_B = _sample(last_BV, first_rng, sampling)
  emit(0, token_B)
  out_BN = jnp.zeros((batch, max_new), jnp.int32).at[:, 0].set(token_B)
  done_B = token_B == eos_id
  # count_B: how many new tokens each row keeps (its EOS not included).
  count_B = jnp.where(done_B, 0, 1)

  def body(carry):
    i, out_BN, count_B, done_B, cache, rng = carry
    positions_B1 = (lengths_B + i - 1)[:, None]
    previous_B1 = jax.lax.dynamic_slice_in_dim(out_BN, i - 1, 1, axis=1)
    logits_B1V, cache = step(cache, previous_B1, positions_B1)
    rng, step_rng = jax.random.split(rng)
    token_B = _sample(logits_B1V[:, 0], step_rng, sampling)
    token_B = jnp.where(done_B, eos_id if eos_id >= 0 else 0, token_B)
    emit(i, token_B)
    out_BN = jax.lax.dynamic_update_slice(out_BN, token_B[:, None], (0, i))
    newly_done_B = token_B == eos_id
    count_B = count_B + jnp.where(done_B | newly_done_B, 0, 1)
    return i + 1, out_BN, count_B, done_B | newly_done_B, cache, rng

  def runs_to(last_step):
    return lambda carry: (carry[0] <= last_step) & ~jnp.all(carry[3])

  carry = (jnp.int32(1), out_BN, count_B, done_B, cache, rng)
  for end, last_step in phases:
    # The cache's new positions come after every query so far: the causal
    # mask hides their zeros until a step writes them.
    i, out_BN, count_B, done_B, cache, rng = carry
    cache = jax.tree.map(
        lambda c, end=end: jnp.pad(
            c, [(0, 0)] * (c.ndim - 1) + [(0, end - c.shape[-1])]), cache)
    carry = jax.lax.while_loop(
        runs_to(last_step), body,
        (i, out_BN, count_B, done_B, cache, rng))
  _, out_BN, count_B, _, _, _ = carry
  return out_BN, count_B


def init_cache(model: nn.Module, batch: int, cache_len: int):
  """A zeroed KV cache holding `cache_len` positions for `batch` rows."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         jnp.zeros((batch, cache_len), jnp.int32),
                         decode=True)['cache'])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


class TextStream:
  """Turns the first row's tokens, step by step, into new pieces of text.

  Callbacks may arrive out of order or more than once (one per device under
  a mesh), so tokens are kept by step and text is released only for the
  steps known so far, in order. Text that ends inside a multi-byte
  character (decoded as U+FFFD) waits for the next token.
  """

  def __init__(self, tokenizer, write):
    self._tokenizer, self._write = tokenizer, write
    self._by_step, self._tokens, self._shown, self._ended = {}, [], '', False

  def __call__(self, step, tokens_B):
    self._by_step.setdefault(int(step), int(np.asarray(tokens_B)[0]))
    while not self._ended and len(self._tokens) in self._by_step:
      token = self._by_step.pop(len(self._tokens))
      if token == self._tokenizer.eos_id:
        self._ended = True
        break
      self._tokens.append(token)
      text = self._tokenizer.decode(self._tokens)
      if text.startswith(self._shown) and not text.endswith('\ufffd'):
        self._write(text[len(self._shown):])
        self._shown = text
