"""The batching engine: what many requests decode together is what each
would decode alone, each under its own settings; stops, cancellations and
per-row sampling."""

import queue

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UsageError
from lm.infer import engine as engines
from lm.infer import generate
from lm.infer import sampling
from tests.models_test import VARIANTS, make


class _Letters:
  """Token t is one letter; token 0 is EOS (never sampled greedily here)."""
  eos_id = 0

  def encode(self, text):
    return [1 + (ord(c) - ord('a')) % 25 for c in text]

  def decode(self, tokens):
    return ''.join(chr(ord('a') + t % 26) for t in tokens)


def _ask(engine, prompt, max_tokens, **settings):
  events = queue.Queue()
  request = engine.submit(engines.Request(
      prompt=prompt, max_tokens=max_tokens, emit=lambda *e: events.put(e),
      **settings))
  return request, events


def _wait(events):
  pieces = []
  while True:
    event = events.get(timeout=300)
    if event[0] == 'text':
      pieces.append(event[1])
    else:
      return ''.join(pieces), event


@pytest.fixture(scope='module')
def tiny():
  model, params = make(**{**VARIANTS['llama_gqa'], 'max_len': 64})
  engine = engines.Engine(model.config, params, _Letters(), slots=3,
                          context=40)
  yield model, params, engine
  engine.stop()


def test_requests_decoded_together_equal_each_decoded_alone(tiny):
  model, params, engine = tiny
  prompts = [[5, 9, 3], [7], [2, 2, 4, 6, 8, 10, 12], [11, 3]]
  # Four requests for three slots: the fourth waits for a free one.
  asked = [_ask(engine, p, 8, temperature=0.0) for p in prompts]
  alone = generate.generate(
      model, params, prompts, sampling=sampling.SamplingConfig(
          max_new_tokens=8, temperature=0.0), rng=jax.random.PRNGKey(0),
      eos_id=None)
  for (request, events), expected in zip(asked, alone):
    text, (_, reason, usage) = _wait(events)
    assert request.tokens == expected and reason == 'length'
    assert text == _Letters().decode(expected)
    assert usage['completion_tokens'] == 8


def test_a_seed_fixes_the_sample_whatever_shares_the_batch(tiny):
  _, _, engine = tiny
  first = _wait(_ask(engine, [4, 4], 10, temperature=1.0, seed=5)[1])[0]
  crowd = [_ask(engine, [3], 10, temperature=1.0, seed=s) for s in (1, 2)]
  again = _wait(_ask(engine, [4, 4], 10, temperature=1.0, seed=5)[1])[0]
  for _, events in crowd:
    _wait(events)
  assert first == again


def test_stop_strings_end_the_text_before_them_and_cancel_frees_a_slot(tiny):
  _, _, engine = tiny
  full = _wait(_ask(engine, [5, 9, 3], 12, temperature=0.0)[1])[0]
  stop = full[3:5]
  text, (_, reason, _) = _wait(_ask(engine, [5, 9, 3], 12, temperature=0.0,
                                    stop=(stop,))[1])
  assert reason == 'stop' and text == full[:full.index(stop)]
  request, events = _ask(engine, [1], 30, temperature=1.0)
  engine.cancel(request)
  assert _wait(events)[1][1] == 'cancelled'
  assert engine.busy() == 0


def test_requests_that_cannot_fit_are_refused(tiny):
  _, _, engine = tiny
  for prompt, max_tokens, settings in (([], 4, {}), ([1] * 39, 2, {}),
                                       ([1], 0, {}), ([1], 4, {'top_k': 99}),
                                       ([1], 4, {'temperature': np.nan}),
                                       ([1], 4, {'seed': 2**64})):
    with pytest.raises(UsageError):
      _ask(engine, prompt, max_tokens, **settings)


@pytest.mark.slow
def test_rows_sample_under_their_own_settings():
  logits = jnp.array([[0.0, 3.0, 1.0, 2.0]] * 4)
  keys = jax.vmap(jax.random.key)(jnp.arange(4, dtype=jnp.uint32))
  tokens, logprobs = sampling.sample(
      logits, keys, jnp.array([0.0, 5.0, 5.0, 5.0]), jnp.array([0, 1, 0, 0]),
      jnp.array([1.0, 1.0, 1e-6, 1.0]))
  # Greedy, top-k of 1 and a tiny nucleus all keep the best token only.
  assert tokens[:3].tolist() == [1, 1, 1]
  np.testing.assert_allclose(logprobs[0], jax.nn.log_softmax(logits[0])[1],
                             rtol=1e-6)
  draws = {int(sampling.sample(
      logits[:1], jax.vmap(jax.random.key)(jnp.array([s], jnp.uint32)),
      jnp.array([5.0]), jnp.array([0]), jnp.array([1.0]))[0][0])
           for s in range(40)}
  assert len(draws) > 1  # A hot temperature does sample.


def test_prompt_lengths_share_a_few_buckets():
  assert [engines.bucket(n, 100) for n in (1, 16, 17, 33, 99)] == [
      16, 16, 32, 64, 100]


def _traffic(engine, lengths, first):
  """Requests of the given prompt lengths, first one at a time, then all
  at once (admitted together: the lock is held while they are submitted),
  each run to its end."""
  rng = np.random.default_rng(first)
  prompt = lambda n: [int(t) for t in rng.integers(1, 25, n)]
  for n in lengths:
    _wait(_ask(engine, prompt(n), min(30, 40 - n), temperature=0.0)[1])
  with engine._lock:  # pylint: disable=protected-access
    asked = [_ask(engine, prompt(n), min(12, 40 - n), temperature=1.0)
             for n in lengths]
  for _, events in asked:
    _wait(events)


def test_new_prompt_lengths_compile_nothing_after_warm_up(tiny):
  """Prompts pad to a few buckets and decoding to a few batch widths and
  cache views: once each has been seen, other lengths reuse them."""
  _, _, engine = tiny
  programs = (engines._prefill_into_slot, engines._decode_steps)  # pylint: disable=protected-access
  _traffic(engine, (3, 20, 36), first=0)
  warm = [p._cache_size() for p in programs]  # pylint: disable=protected-access
  _traffic(engine, (9, 30, 33), first=1)
  _traffic(engine, (1, 17, 38), first=2)
  assert [p._cache_size() for p in programs] == warm  # pylint: disable=protected-access


@pytest.mark.slow
def test_warm_up_compiles_what_traffic_then_needs(tiny):
  model, params, _ = tiny
  # A context and slot count no other test uses: nothing is compiled yet.
  engine = engines.Engine(model.config, params, _Letters(), slots=3,
                          context=48)
  try:
    programs = (engines._prefill_into_slot, engines._decode_steps)  # pylint: disable=protected-access
    assert engine.warm_up(48) == 3 * (2 + 3)  # 3 buckets; widths 1, 2, 3
    warm = [p._cache_size() for p in programs]  # pylint: disable=protected-access
    _traffic(engine, (2, 25, 39), first=3)
    assert [p._cache_size() for p in programs] == warm  # pylint: disable=protected-access
  finally:
    engine.stop()
