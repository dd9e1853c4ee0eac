"""Continuous batching: many requests share one compiled decoding step.

The engine holds `slots` rows of KV cache. A new request is prefilled on its
own (its prompt padded to a power-of-two bucket, so a handful of programs
serve every length) and its cache copied into a free slot; from the next
step on it decodes with the others. Every step feeds each live slot one
token and samples the next under that request's own temperature, top-k,
top-p and seed; one call runs `steps_per_call` steps, and requests join
and leave between calls. A request that ends (EOS, a stop string, max_tokens,
cancelled) frees its slot at once.

A call computes only the live slots (gathered into a power-of-two batch)
and reads their cache only as far as the longest of them needs (a
power-of-two view): one request alone decodes at batch 1, and short
requests do not pay for the context a long one might use.

No HTTP here: experiments/serve.py puts the OpenAI API on top, and
experiments/chat.py a terminal. Callers get events through the callback
they submit with: ('text', piece), then ('done', finish reason, usage).
"""

import dataclasses
import functools
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UsageError
from lm.infer import generate
from lm.infer.sampling import SamplingConfig
from lm.infer.sampling import check_seed
from lm.infer.sampling import sample
from lm.kernels import matmul
from lm.kernels.argmax import argmax
from lm.model import registry
from lm.model.config import ModelConfig

_SMALLEST_BUCKET = 16


def bucket(length: int, limit: int) -> int:
  """The padded length for `length` tokens: a power of two, at most
  `limit`."""
  return min(limit, max(_SMALLEST_BUCKET, 1 << (length - 1).bit_length()))


@dataclasses.dataclass
class Request:
  """One completion: its prompt tokens, limits and sampling settings."""

  prompt: list[int]
  max_tokens: int
  emit: Callable[..., None]
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop: tuple[str, ...] = ()
  # Filled by the engine.
  tokens: list[int] = dataclasses.field(default_factory=list)
  token_logprobs: list[float] = dataclasses.field(default_factory=list)
  text: str = ''
  shown: int = 0
  cancelled: bool = False
  ended_by_eos: bool = False  # EOS is not among `tokens`; this says it came.


class Engine:
  """Decodes submitted requests in one batch; runs in its own thread."""

  def __init__(self, model_config: ModelConfig, params: Any, tokenizer,
               slots: int = 8, context: int | None = None,
               steps_per_call: int = 8):
    if not registry.get(model_config.family).generates:
      raise UsageError(f'serving continues text with decoder-only models; '
                       f'this is a {model_config.family} model')
    if slots < 1:
      raise UsageError(f'slots must be >= 1, got {slots}')
    self.tokenizer = tokenizer
    self.config = model_config
    self.context = min(context or model_config.context_limit,
                       model_config.context_limit)
    self.slots = slots
    self.steps_per_call = steps_per_call
    self._model = registry.build_model(model_config)
    self._params = params
    self._cache = generate.init_cache(self._model, slots, self.context)
    self._live: list[Request | None] = [None] * slots
    self._waiting: list[Request] = []
    self._lock = threading.Condition()
    self._stopping = False
    self._thread = threading.Thread(target=self._run, name='lm-engine',
                                    daemon=True)
    self._thread.start()

  # -- what callers use ------------------------------------------------------

  def check(self, prompt: list[int], max_tokens: int,
            sampling: SamplingConfig, seed: int) -> None:
    """Raises UsageError for a request the engine cannot serve."""
    if not prompt:
      raise UsageError('the prompt is empty; give some text to continue')
    if max_tokens < 1:
      raise UsageError(f'max_tokens must be >= 1, got {max_tokens}')
    if len(prompt) + max_tokens > self.context:
      raise UsageError(
          f'the prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) '
          f'= {len(prompt) + max_tokens} exceeds the context of '
          f'{self.context} tokens; shorten one of them')
    sampling.validate(self.config.vocab_size)
    check_seed(seed)

  def submit(self, request: Request) -> Request:
    self.check(request.prompt, request.max_tokens, SamplingConfig(
        max_new_tokens=request.max_tokens, temperature=request.temperature,
        top_k=request.top_k, top_p=request.top_p), request.seed)
    with self._lock:
      if self._stopping:
        raise UsageError('the engine is shutting down')
      self._waiting.append(request)
      self._lock.notify()
    return request

  def cancel(self, request: Request) -> None:
    """Ends the request at the next step; its slot is free after it."""
    request.cancelled = True

  def busy(self) -> int:
    with self._lock:
      return len(self._waiting) + sum(r is not None for r in self._live)

  def stop(self, wait: bool = True) -> None:
    """Cancels what is waiting, lets live requests finish, and ends."""
    with self._lock:
      self._stopping = True
      for request in self._waiting:
        request.emit('done', 'cancelled', _usage(request))
      self._waiting.clear()
      self._lock.notify()
    if wait:
      self._thread.join()

  def warm_up(self, length: int) -> int:
    """Compiles, before any request, every program that requests of up to
    `length` tokens (prompt + completion) can need: each prompt bucket and
    each batch width with each cache view. Call it before submitting; it
    returns how many programs it ran."""
    length = min(length, self.context)
    with self._lock:
      if any(self._live) or self._waiting:
        raise UsageError('warm_up runs before any request is submitted')
      lengths = sorted({bucket(n, self.context)
                        for n in range(1, length + 1)})
      off = self._settings([None])
      for width in lengths:
        self._cache, _, _ = _prefill_into_slot(
            self._model, self.context, self._params, self._cache,
            np.zeros((1, width), np.int32), np.int32(1), np.int32(0), *off,
            np.uint32(0))
      widths = sorted({min(self.slots, 1 << (n - 1).bit_length())
                       for n in range(1, self.slots + 1)})
      # A call's view covers the positions its steps write, past `length`.
      views = sorted({bucket(n, self.context) for n in range(
          1, min(length + self.steps_per_call, self.context) + 1)})
      for width in widths:
        rows = np.arange(width, dtype=np.int32)
        empty = self._settings([None] * width)
        for view in views:
          zeros = np.zeros(width, np.int32)
          self._cache, _, _ = _decode_steps(
              self._model, view, self.steps_per_call, self._params,
              self._cache, rows, zeros, zeros, *empty,
              np.zeros(width, np.uint32))
      for width in lengths:
        _score(self._model, self._params, np.zeros((1, width), np.int32))
    return len(lengths) * 2 + len(views) * len(widths)

  def score(self, tokens: list[int]
            ) -> tuple[list[float | None], list[int], list[float]]:
    """The log-probability of each token given those before it (None for
    the first, which has no context), with the most likely token at each
    position and its log-probability: what `echo` with `logprobs` returns.
    A forward pass of its own, beside the decoding batch."""
    if not tokens:
      raise UsageError('the prompt is empty')
    if len(tokens) > self.context:
      raise UsageError(f'the prompt has {len(tokens)} tokens, more than the '
                       f'context of {self.context}')
    n = len(tokens)
    padded = np.zeros((1, bucket(n, self.context)), np.int32)
    padded[0, :n] = tokens
    chosen, best, best_logprob = (np.asarray(x) for x in _score(
        self._model, self._params, padded))
    return ([None] + [float(x) for x in chosen[:n - 1]],
            [int(x) for x in best[:n]], [float(x) for x in best_logprob[:n]])

  # -- the loop --------------------------------------------------------------

  def _run(self):
    while True:
      with self._lock:
        while not self._waiting and not any(self._live) and (
            not self._stopping):
          self._lock.wait()
        if self._stopping and not any(self._live):
          return
        admitted = []
        for slot in range(self.slots):
          while self._live[slot] is None and self._waiting:
            request = self._waiting.pop(0)
            if request.cancelled:  # Its client left while it waited.
              request.emit('done', 'cancelled', _usage(request))
            else:
              self._live[slot] = request
              admitted.append(slot)
      try:
        for slot in admitted:
          self._prefill(slot, self._live[slot])
        if any(self._live):
          self._step()
      except Exception as e:  # pylint: disable=broad-except
        # A failed step ends its requests with the reason, not the server.
        for slot, request in enumerate(self._live):
          if request is not None:
            request.emit('error', f'{type(e).__name__}: {str(e)[:300]}')
            self._live[slot] = None

  def _prefill(self, slot: int, request: Request):
    length = len(request.prompt)
    width = bucket(length, self.context)
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :length] = request.prompt
    self._cache, token, logprob = _prefill_into_slot(
        self._model, self.context, self._params, self._cache, tokens,
        np.int32(length), np.int32(slot), *self._settings([request]),
        np.uint32(0))
    self._accept(slot, request, int(token[0]), float(logprob[0]))

  def _step(self):
    """`steps_per_call` tokens for every live request. Only live slots are
    computed, gathered into a power-of-two batch (free slots pad it)."""
    live = [(slot, r) for slot, r in enumerate(self._live) if r is not None]
    width = min(self.slots, 1 << (len(live) - 1).bit_length())
    free = [s for s in range(self.slots) if self._live[s] is None]
    rows = [slot for slot, _ in live] + free[:width - len(live)]
    requests = [self._live[slot] for slot in rows]
    positions = np.array([len(r.prompt) + len(r.tokens) - 1 if r else 0
                          for r in requests], np.int32)
    tokens = np.array([r.tokens[-1] if r else 0 for r in requests],
                      np.int32)
    count = self.steps_per_call
    # The view covers every position the steps write.
    view = bucket(int(positions.max()) + count, self.context)
    temperature, top_k, top_p, seeds = self._settings(requests)
    steps = np.array([len(r.tokens) if r else 0 for r in requests],
                     np.uint32)
    self._cache, next_tokens, logprobs = _decode_steps(
        self._model, view, count, self._params, self._cache,
        np.array(rows, np.int32), tokens, positions, temperature, top_k,
        top_p, seeds, steps)
    next_tokens, logprobs = np.asarray(next_tokens), np.asarray(logprobs)
    for k in range(count):
      for row, (slot, request) in enumerate(live):
        if self._live[slot] is request:  # Not ended at an earlier step.
          self._accept(slot, request, int(next_tokens[k, row]),
                       float(logprobs[k, row]))

  def _settings(self, requests):
    """Per-row sampling arrays (empty rows: greedy, seed 0)."""
    def column(name, dtype, empty):
      return np.array([getattr(r, name) if r else empty for r in requests],
                      dtype)
    return (column('temperature', np.float32, 0.0),
            column('top_k', np.int32, 0), column('top_p', np.float32, 1.0),
            column('seed', np.uint32, 0))

  def _accept(self, slot: int, request: Request, token: int,
              logprob: float):
    """Adds the sampled token to the request, streams new text, and frees
    the slot when the request ends."""
    reason = None
    if request.cancelled:
      reason = 'cancelled'
    elif token == self.tokenizer.eos_id:
      reason = 'stop'
      request.ended_by_eos = True
      # All of it, a character the last tokens left unfinished too (as
      # generate decodes it).
      request.text = self.tokenizer.decode(request.tokens)
    else:
      request.tokens.append(token)
      request.token_logprobs.append(logprob)
      reason = self._show_text(request)
      if reason is None and len(request.tokens) >= request.max_tokens:
        reason = 'length'
        request.text = self.tokenizer.decode(request.tokens)
    if reason is not None:
      if reason != 'cancelled':
        self._flush(request)
      request.emit('done', reason, _usage(request))
      with self._lock:
        self._live[slot] = None

  def _show_text(self, request: Request) -> str | None:
    """Emits the text that no stop string can still claim; 'stop' where
    one has appeared (the text ends before it)."""
    text = self.tokenizer.decode(request.tokens)
    if text.endswith('\ufffd'):
      return None  # Inside a multi-byte character: wait for the rest.
    request.text = text
    for stop in request.stop:
      found = text.find(stop, max(0, request.shown - len(stop) + 1))
      if found >= 0:
        request.text = text[:found]
        return 'stop'
    hold = max((len(s) - 1 for s in request.stop), default=0)
    safe = len(text) - hold
    if safe > request.shown:
      request.emit('text', text[request.shown:safe])
      request.shown = safe
    return None

  def _flush(self, request: Request):
    if len(request.text) > request.shown:
      request.emit('text', request.text[request.shown:])
      request.shown = len(request.text)


def _usage(request: Request) -> dict:
  return {'prompt_tokens': len(request.prompt),
          'completion_tokens': len(request.tokens),
          'total_tokens': len(request.prompt) + len(request.tokens)}


def _keys(seeds_S, steps_S):
  """A key per row from its request's seed and how many tokens it has: a
  request samples the same text whatever else shares the batch."""
  return jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(
      seeds_S, steps_S)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _prefill_into_slot(model, context, params, cache, tokens_1P, length,
                       slot, temperature, top_k, top_p, seed, step):
  """Prefills one prompt and writes its cache into row `slot`; samples
  the request's first token."""
  logits_1V, fresh = generate.prefill(model, params, tokens_1P, length[None],
                                      context)
  cache = jax.tree.map(
      lambda whole, row: jax.lax.dynamic_update_slice_in_dim(
          whole, row.astype(whole.dtype), slot, axis=0), cache, fresh)
  token, logprob = sample(logits_1V, _keys(seed, step[None]), temperature,
                          top_k, top_p)
  return cache, token, logprob


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _decode_steps(model, view, count, params, cache, rows_S, tokens_S,
                  positions_S, temperature_S, top_k_S, top_p_S, seeds_S,
                  steps_S):
  """`count` tokens for each of the slots `rows_S`, reading their cache's
  first `view` positions: [count, S] tokens and log-probabilities. One
  call runs
  several steps because on some backends (XLA's CPU one) a call prepares
  the weights' layout afresh, which a loop inside the program does once.
  Rows that end early run on; their tokens are dropped by the caller."""
  window = jax.tree.map(lambda c: c[rows_S, ..., :view], cache)

  def step(carry, k):
    window, tokens_S = carry
    positions = jnp.minimum(positions_S + k, view - 1)[:, None]
    with matmul.decoding_loop():
      logits_S1V, updated = model.apply(
          {'params': params, 'cache': window}, tokens_S[:, None], positions,
          decode=True, mutable=['cache'])
    token_S, logprob_S = sample(logits_S1V[:, 0],
                                _keys(seeds_S, steps_S + k), temperature_S,
                                top_k_S, top_p_S)
    return (updated['cache'], token_S), (token_S, logprob_S)

  (window, _), (tokens_KS, logprobs_KS) = jax.lax.scan(
      step, (window, tokens_S), jnp.arange(count, dtype=jnp.int32))
  cache = jax.tree.map(lambda whole, part: whole.at[rows_S, ..., :view].set(
      part), cache, window)
  return cache, tokens_KS, logprobs_KS


@functools.partial(jax.jit, static_argnums=(0,))
def _score(model, params, tokens_1P):
  """Per position t: log p(token t+1 | tokens <= t), the most likely next
  token and its log-probability."""
  logprobs_1PV = jax.nn.log_softmax(
      model.apply({'params': params}, tokens_1P).astype(jnp.float32), -1)
  following_1P = jnp.roll(tokens_1P, -1, axis=1)
  chosen = jnp.take_along_axis(logprobs_1PV, following_1P[..., None],
                               axis=-1)[..., 0]
  best = argmax(logprobs_1PV)
  return chosen[0], best[0], jnp.max(logprobs_1PV, axis=-1)[0]
