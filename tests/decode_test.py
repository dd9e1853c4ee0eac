"""Decoding: the KV cache reproduces the full forward pass; sampling filters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UsageError
from lm.infer import beam_search
from lm.infer import generate
from lm.infer import sampling
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from tests.models_test import VARIANTS, make


@pytest.mark.slow
@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_prefill_then_cached_steps_equal_full_forward(variant):
  """Ragged rows: row 0 has a 5-token prompt, row 1 a 2-token prompt."""
  model, params = make(**VARIANTS[variant])
  sequence = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 1, 50)
  full = jax.jit(model.apply)({'params': params}, sequence)
  lengths = np.array([5, 2])
  prompt = np.where(np.arange(5) < lengths[:, None], sequence[:, :5], 0)
  cache = generate.init_cache(model, batch=2, cache_len=12)
  cached_apply = jax.jit(
      lambda variables, tokens, positions: model.apply(
          variables, tokens, positions, decode=True, mutable=['cache']))
  logits, variables = cached_apply(
      {'params': params, 'cache': cache}, prompt,
      jnp.broadcast_to(jnp.arange(5), (2, 5)))
  for row in range(2):
    np.testing.assert_allclose(logits[row, :lengths[row]],
                               full[row, :lengths[row]], atol=1e-5)
  cache = variables['cache']
  for step in range(4):
    positions = lengths + step
    token = sequence[np.arange(2), positions][:, None]
    logits, variables = cached_apply(
        {'params': params, 'cache': cache}, token, positions[:, None])
    cache = variables['cache']
    np.testing.assert_allclose(logits[:, 0], full[np.arange(2), positions],
                               atol=1e-5)


def assert_greedy_decoding_matches_full_forward(model, params, steps=6):
  """generate's greedy tokens == argmax of uncached passes, token by token,
  for ragged prompts."""
  prompts = [[5, 9, 3], [7]]
  new = generate.generate(model, params, prompts, rng=jax.random.PRNGKey(0),
                        sampling=sampling.SamplingConfig(max_new_tokens=steps,
                                                       temperature=0.0),
                        eos_id=None)
  # One compiled pass at a fixed length: the causal model never sees the
  # right padding, so position t's logits are those of tokens[:t + 1].
  forward = jax.jit(model.apply)
  for prompt, generated in zip(prompts, new):
    tokens = list(prompt)
    for _ in range(steps):
      padded = np.zeros((1, 3 + steps + 1), np.int32)
      padded[0, :len(tokens)] = tokens
      logits = forward({'params': params}, padded)
      tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
    assert generated == tokens[len(prompt):]


def test_greedy_generate_equals_repeated_argmax_of_full_forward():
  assert_greedy_decoding_matches_full_forward(*make(**VARIANTS['llama_gqa']))


def test_cache_phases_grow_to_the_whole_cache():
  # bench-gpt: a 64-token prompt and 128 new tokens read 143 positions a
  # step on average instead of 192.
  assert generate.cache_phases(64, 128) == [(96, 32), (128, 64), (160, 96),
                                          (191, 127)]
  # A short generation keeps one phase (one compiled loop body).
  assert generate.cache_phases(5, 8) == [(12, 7)]
  assert generate.cache_phases(10, 1) == [(10, 0)]
  for prompt_len in (1, 7, 64):
    for new in (1, 2, 31, 33, 48, 49, 64, 97, 128, 200):
      phases = generate.cache_phases(prompt_len, new)
      assert phases[-1][1] == new - 1
      first_step = 1
      for end, last_step in phases:
        # Steps run in order, each once, inside the phase's cache, and the
        # phase's last step fills it.
        if new > 1:
          assert last_step >= first_step
        assert end == prompt_len + last_step
        first_step = last_step + 1


def test_decoding_in_cache_phases_equals_full_forward(monkeypatch):
  monkeypatch.setattr(generate, '_MIN_PHASE_STEPS', 2)
  assert generate.cache_phases(3, 7) == [(5, 2), (7, 4), (9, 6)]
  assert_greedy_decoding_matches_full_forward(
      *make(**VARIANTS['llama_gqa']), steps=7)


def test_logits_at_one_position_per_row_equal_the_full_logits():
  model, params = make(**VARIANTS['llama_gqa'])
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 6), 1, 50)
  full = model.apply({'params': params}, tokens)
  at_B = jnp.array([4, 1])
  some = model.apply({'params': params}, tokens, logits_at_B=at_B)
  assert some.shape == (2, 1, full.shape[-1])
  np.testing.assert_allclose(some[:, 0], full[jnp.arange(2), at_B],
                             atol=1e-5)


@pytest.mark.parametrize('chunk', [4, 5, 11])
def test_a_prefill_in_chunks_equals_one_in_a_piece(chunk):
  # Ragged rows whose last tokens fall in different chunks.
  model, params = make(**VARIANTS['llama_gqa'])
  tokens = jax.random.randint(jax.random.PRNGKey(5), (3, 11), 1, 50)
  lengths = jnp.array([11, 3, 8])
  whole = jax.jit(lambda t: generate.prefill(model, params, t, lengths, 14,
                                             chunk=64))(tokens)
  chunked = jax.jit(lambda t: generate.prefill(model, params, t, lengths, 14,
                                               chunk=chunk))(tokens)
  for got, expected in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole)):
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_op_by_op_decoding_writes_what_the_compiled_loop_does():
  model, params = make(**VARIANTS['llama_gqa'])
  kwargs = dict(rng=jax.random.PRNGKey(3), eos_id=None, sampling=(
      sampling.SamplingConfig(max_new_tokens=4, temperature=0.7, top_k=5)))
  prompts = [[5, 9, 3], [7]]
  assert generate.generate(model, params, prompts, jit=False,
                         **kwargs) == generate.generate(model, params, prompts,
                                                      **kwargs)


def test_generation_stops_at_eos():
  model, params = make()
  settings = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0)
  free = generate.generate(model, params, [[4, 2]], rng=jax.random.PRNGKey(0),
                         sampling=settings, eos_id=None)[0]
  stopped = generate.generate(model, params, [[4, 2]], rng=jax.random.PRNGKey(0),
                            sampling=settings, eos_id=free[2])[0]
  assert stopped == free[:free.index(free[2])]


class _Letters:
  """A tokenizer whose token t is one letter; token 7 is EOS."""
  eos_id = 7

  def decode(self, tokens):
    return ''.join(chr(ord('a') + t % 26) for t in tokens)


@pytest.mark.slow
@pytest.mark.parametrize('jit', [True, False])
def test_streamed_pieces_are_the_continuation_token_by_token(jit):
  model, params = make()
  settings = sampling.SamplingConfig(max_new_tokens=6, temperature=0.9)
  pieces = []
  stream = generate.TextStream(_Letters(), pieces.append)
  new = generate.generate(model, params, [[4, 2], [3]],
                          rng=jax.random.PRNGKey(1), sampling=settings,
                          eos_id=7, jit=jit, on_tokens=stream)
  assert ''.join(pieces) == _Letters().decode(new[0])
  assert len(pieces) == len(new[0]) > 1


def test_a_text_stream_keeps_step_order_and_waits_for_whole_characters():
  class Bytes:
    eos_id = 0

    def decode(self, tokens):
      return bytes(tokens).decode('utf-8', errors='replace')

  pieces = []
  stream = generate.TextStream(Bytes(), pieces.append)
  for step, token in [(1, 0xa9), (0, 0xc3), (1, 0xa9), (2, ord('!')),
                      (3, 0), (4, ord('x'))]:
    stream(step, np.array([token]))
  assert pieces == ['\u00e9', '!']


def _sample(logits, key, settings):
  return sampling.sample(logits, jax.random.split(key, len(logits)),
                         settings.temperature, settings.top_k,
                         settings.top_p)[0]


def test_per_row_settings_draw_as_the_shared_ones_do():
  """One sampler: per-row settings (the engine's) pick what the same
  settings shared by every row (generate's) pick, with the same keys."""
  logits = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  for temperature, top_k, top_p in ((0.0, 0, 1.0), (0.8, 5, 1.0),
                                    (1.0, 0, 0.6), (1.3, 3, 0.9)):
    shared = sampling.sample(logits, keys, temperature, top_k, top_p)
    rows = sampling.sample(logits, keys, jnp.full(3, temperature),
                           jnp.full(3, top_k), jnp.full(3, top_p))
    np.testing.assert_array_equal(shared[0], rows[0])
    np.testing.assert_allclose(shared[1], rows[1], rtol=1e-6)


def test_top_k_keeps_only_the_k_best_tokens():
  logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
  settings = sampling.SamplingConfig(temperature=1.0, top_k=2)
  draws = {int(_sample(logits, jax.random.PRNGKey(i), settings)[0])
           for i in range(100)}
  assert draws == {2, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([[0.05, 0.15, 0.3, 0.5]]))
  settings = sampling.SamplingConfig(temperature=1.0, top_p=0.7)
  draws = {int(_sample(logits, jax.random.PRNGKey(i), settings)[0])
           for i in range(100)}
  assert draws == {2, 3}


def test_temperature_zero_is_argmax():
  logits = jnp.array([[0.1, 3.0, 0.2], [2.0, 0.0, 1.0]])
  out = _sample(logits, jax.random.PRNGKey(0),
                sampling.SamplingConfig(temperature=0.0))
  np.testing.assert_array_equal(out, [1, 0])


def test_prompt_longer_than_context_is_a_clear_error():
  model, params = make()
  with pytest.raises(UsageError, match='exceeds the model'):
    generate.generate(model, params, [[1] * 10], rng=jax.random.PRNGKey(0),
                    sampling=sampling.SamplingConfig(max_new_tokens=10),
                    eos_id=None, max_len=16)


def test_empty_prompt_is_a_clear_error():
  model, params = make()
  with pytest.raises(UsageError, match='empty'):
    generate.generate(model, params, [[]], rng=jax.random.PRNGKey(0),
                    sampling=sampling.SamplingConfig(), eos_id=None)


@pytest.mark.parametrize('bad', [dict(max_new_tokens=0), dict(top_p=0.0),
                                 dict(top_k=-1), dict(temperature=-1.0)])
def test_bad_sampling_settings_are_rejected(bad):
  with pytest.raises(UsageError):
    sampling.SamplingConfig(**bad).validate()


# ------------------------------------------------- encoder-decoder models ----


def seq2seq_model(position, vocab_size=40):
  config = ModelConfig(
      family='encoder_decoder', vocab_size=vocab_size, d_model=32,
      num_layers=2, num_heads=2, d_ff=64, position=position, max_len=32)
  model = registry.build_model(config)
  params = model_params.init_params(model, jax.random.PRNGKey(1))
  # Larger weights make peaked, varied next-token distributions.
  return model, jax.tree.map(lambda x: 6 * x, params)


def full_forward_logprobs(forward, params, source, prefix):
  """Log-probs after `prefix` from one uncached pass.

  Source and target are padded to fixed lengths (the source under its mask;
  the causal decoder never sees the target's right padding) so `forward`
  compiles once instead of once per prefix length.
  """
  source_BS = np.zeros((1, 8), np.int32)
  source_BS[0, :len(source)] = source
  target_BL = np.zeros((1, 10), np.int32)
  target_BL[0, :len(prefix) + 1] = [1] + prefix
  mask_BS = np.arange(8)[None] < len(source)
  logits = forward({'params': params}, source_BS, target_BL, mask_BS)
  return jax.nn.log_softmax(logits[0, len(prefix)])


@pytest.mark.slow
@pytest.mark.parametrize('position', ['sinusoidal', 'relative'])
def test_cached_beam_of_one_equals_full_forward_greedy(position):
  model, params = seq2seq_model(position)
  forward = jax.jit(model.apply)
  sources = [[3, 4, 5, 6], [7, 8, 9], [10]]
  got = beam_search.translate(model, params, sources, max_new_tokens=8, bos_id=1,
                         eos_id=2, beam_size=1)
  for source, tokens in zip(sources, got):
    expected = []
    for _ in range(8):
      logprobs = full_forward_logprobs(forward, params, source, expected)
      if not expected:  # No EOS before the first token.
        logprobs = logprobs.at[2].set(-jnp.inf)
      token = int(jnp.argmax(logprobs))
      if token == 2:
        break
      expected.append(token)
    assert tokens == expected


def test_wide_beam_finds_the_most_likely_output():
  """With as many beams as 2-token prefixes, 3-step search is exhaustive."""
  vocab, eos, steps = 5, 2, 3
  model, params = seq2seq_model('relative', vocab_size=vocab)
  forward = jax.jit(model.apply)
  source = [3, 4, 0, 1]
  best_score, best = -np.inf, None
  frontier = [([], 0.0)]
  for _ in range(steps):
    grown = []
    for prefix, score in frontier:
      logprobs = np.asarray(full_forward_logprobs(forward, params, source,
                                                  prefix))
      for token in range(vocab):
        total = score + logprobs[token]
        if token == eos:
          if total > best_score:
            best_score, best = total, prefix
        else:
          grown.append((prefix + [token], total))
    frontier = grown
  for prefix, score in frontier:  # cut off by the length limit
    if score > best_score:
      best_score, best = score, prefix
  got = beam_search.translate(model, params, [source], max_new_tokens=steps,
                         bos_id=1, eos_id=eos, beam_size=vocab ** 2,
                         length_penalty=0.0, min_new_tokens=0)
  assert got == [best]


@pytest.mark.parametrize('beam_size', [1, 4])
def test_no_search_returns_an_empty_text_unless_allowed(beam_size):
  """EOS is made the most likely first token; it still comes after one."""
  model, params = seq2seq_model('relative')
  source = [3, 4, 5, 6]
  eos = int(jnp.argmax(full_forward_logprobs(jax.jit(model.apply), params,
                                             source, [])))
  search = functools.partial(beam_search.translate, model, params, [source],
                             max_new_tokens=6, bos_id=1, eos_id=eos,
                             beam_size=beam_size)
  assert search(min_new_tokens=0) == [[]]
  assert len(search()[0]) >= 1 and len(search(min_new_tokens=3)[0]) >= 3
  with pytest.raises(UsageError, match='min_new_tokens'):
    search(min_new_tokens=7)
