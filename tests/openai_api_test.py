"""The API's own checks of a request, without a server or a model: token
ids, seeds and chat templates each asked of one owner (tests/serve_test.py
drives the real server)."""

import asyncio
import json
import types

import pytest

from lm.data import tokenizers
from lm.infer import openai_api
from lm.infer import sampling
from lm.infer.api_fields import ApiError


def _server(tokenizer, vocab_size=300):
  engine = types.SimpleNamespace(
      config=types.SimpleNamespace(vocab_size=vocab_size),
      tokenizer=tokenizer, context=64)
  return openai_api.Server(engine, 'tiny')


def _refusal(coroutine) -> ApiError:
  with pytest.raises(ApiError) as refused:
    asyncio.run(coroutine)
  assert refused.value.status == 400
  return refused.value


def test_token_ids_outside_the_vocabulary_are_refused_alike():
  tokenizer = tokenizers.ByteTokenizer()
  server = _server(tokenizer, vocab_size=300)
  hi = tokenizer.encode('Hi')
  body = asyncio.run(server._detokenize({'tokens': hi}))  # pylint: disable=protected-access
  assert json.loads(body.body) == {'prompt': 'Hi'}
  for ids in ([hi[0], 300], [True], [-1], 'Hi'):
    assert _refusal(server._detokenize({'tokens': ids})).param == 'tokens'  # pylint: disable=protected-access
    if isinstance(ids, list):
      with pytest.raises(ApiError, match=r'token ids in \[0, 300\)'):
        server._prompts({'prompt': [ids]})  # pylint: disable=protected-access
  assert server._prompts({'prompt': [hi]}) == (['Hi'], [hi])  # pylint: disable=protected-access


def test_seeds_are_checked_by_the_sampler_s_own_range():
  server = _server(tokenizers.ByteTokenizer())
  low, high = sampling.SEEDS
  for seed in (low, 0, high):
    assert server._settings({'seed': seed}, [[1]])['seed'] == seed  # pylint: disable=protected-access
  for seed in (low - 1, high + 1):
    with pytest.raises(ApiError, match='seed'):
      server._settings({'seed': seed}, [[1]])  # pylint: disable=protected-access
    assert not sampling.valid_seed(seed)


def test_a_model_without_a_chat_template_answers_with_the_api_s_words():
  tokenizer = tokenizers.ByteTokenizer()
  assert tokenizers.chat_template(tokenizer) is None
  server = _server(tokenizer)
  info = json.loads(asyncio.run(server._tokenizer_info({})).body)  # pylint: disable=protected-access
  assert info['chat_template'] is None
  refused = _refusal(server._chat(  # pylint: disable=protected-access
      {'messages': [{'role': 'user', 'content': 'Hi'}]}))
  assert '/v1/completions' in str(refused) and '--chat' not in str(refused)
