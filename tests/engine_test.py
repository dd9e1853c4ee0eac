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


def test_rows_sample_under_their_own_settings():
  logits = jnp.array([[0.0, 3.0, 1.0, 2.0]] * 4)
  keys = jax.vmap(jax.random.key)(jnp.arange(4, dtype=jnp.uint32))
  tokens, logprobs = sampling.sample_rows(
      logits, jnp.array([0.0, 5.0, 5.0, 5.0]), jnp.array([0, 1, 0, 0]),
      jnp.array([1.0, 1.0, 1e-6, 1.0]), keys)
  # Greedy, top-k of 1 and a tiny nucleus all keep the best token only.
  assert tokens[:3].tolist() == [1, 1, 1]
  np.testing.assert_allclose(logprobs[0], jax.nn.log_softmax(logits[0])[1],
                             rtol=1e-6)
  draws = {int(sampling.sample_rows(
      logits[:1], jnp.array([5.0]), jnp.array([0]), jnp.array([1.0]),
      jax.vmap(jax.random.key)(jnp.array([s], jnp.uint32)))[0][0])
           for s in range(40)}
  assert len(draws) > 1  # A hot temperature does sample.


def test_prompt_lengths_share_a_few_buckets():
  assert [engines.bucket(n, 100) for n in (1, 16, 17, 33, 99)] == [
      16, 16, 32, 64, 100]
