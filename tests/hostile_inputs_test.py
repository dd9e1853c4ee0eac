"""Hostile paths, files, templates and settings: each is one UsageError
naming the problem, found before any work, in bounded time and memory."""

import json
import os
import struct
import time

import numpy as np
import pytest

from lm.convert import gguf_file
from lm.convert import packaged
from lm.convert import tokenizer_files
from lm.data import chat_template
from lm.data import tokenizers
from lm.errors import UsageError
from lm.infer import generate
from lm.infer import sampling
from lm.infer.embeddings import embed_texts
from lm.io import config_file
from lm.io import outputs
from lm.io import paths
from lm.io import train_data_file
from lm.model import registry
from lm.model.config import ModelConfig


def test_empty_paths_never_mean_the_current_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for check in (paths.new_directory, paths.existing_directory, paths.source):
    with pytest.raises(UsageError, match='empty path'):
      check('')
  with pytest.raises(UsageError, match='empty path'):
    with outputs.building(''):
      pass
  assert os.listdir(tmp_path) == [] and os.path.isdir(tmp_path)


def test_outputs_that_are_links_or_too_long_are_refused(tmp_path):
  target = tmp_path / 'target'
  target.mkdir()
  (tmp_path / 'link').symlink_to(target)
  (tmp_path / 'dangling').symlink_to(tmp_path / 'nowhere')
  (tmp_path / 'file').write_text('x')
  for path, words in ((tmp_path / 'link', 'symbolic link'),
                      (tmp_path / 'dangling', 'symbolic link'),
                      (tmp_path / ('n' * 300), 'at most 255'),
                      (tmp_path / 'file' / 'out', 'is a file'),
                      (tmp_path / 'file', 'already exists')):
    with pytest.raises(UsageError, match=words):
      paths.new_directory(str(path))
  assert os.listdir(target) == []


def test_a_result_appears_whole_or_not_at_all(tmp_path):
  with pytest.raises(RuntimeError):
    with outputs.building(str(tmp_path / 'out')) as staging:
      open(os.path.join(staging, 'half'), 'w').close()
      raise RuntimeError('the work failed')
  assert os.listdir(tmp_path) == []
  with outputs.building(str(tmp_path / 'out')) as staging:
    open(os.path.join(staging, 'whole'), 'w').close()
  assert os.listdir(tmp_path / 'out') == ['whole']


def test_a_pipe_is_not_read_as_a_source(tmp_path):
  os.mkfifo(tmp_path / 'fifo')
  with pytest.raises(UsageError, match='not a regular file'):
    paths.source(str(tmp_path / 'fifo'))


@pytest.mark.parametrize('template, words', [
    ('{% for m in messages %}', 'does not parse'),
    ("{{ raise_exception('user and assistant only') }}", 'refuses'),
    ("{{ 'x' * 1000000000 }}", 'more than 1,000,000'),
    ('{{ 10 ** 100000000 }}', 'too large'),
    ('{% for i in range(100000) %}{% for j in range(100000) %}'
     '{% endfor %}{% endfor %}', 'longer than'),
    ('{{ nothing.here }}', 'UndefinedError'),
])
def test_chat_templates_render_under_limits(template, words):
  start = time.monotonic()
  with pytest.raises(UsageError, match=words):
    chat_template.render(template, messages=[{'role': 'user',
                                              'content': 'hi'}])
  assert time.monotonic() - start < chat_template.SECONDS + 1


def _gguf_header(tensors: int, keys: int) -> bytes:
  return gguf_file.MAGIC + struct.pack('<IQQ', 3, tensors, keys)


@pytest.mark.parametrize('make', [
    lambda real: _gguf_header(2**40, 0),
    lambda real: _gguf_header(0, 2**40),
    lambda real: real[:8],
    lambda real: real[:10_000],
    # The first key's length, made larger than the file.
    lambda real: real[:24] + struct.pack('<Q', 2**50) + real[32:200_000],
])
def test_a_malformed_gguf_is_one_error(tmp_path, make):
  with open(packaged.path('smollm2'), 'rb') as f:
    real = f.read(200_000)
  path = tmp_path / 'bad.gguf'
  path.write_bytes(make(real))
  with pytest.raises(UsageError, match='bad.gguf'):
    gguf_file.read_llama(str(path))


@pytest.mark.parametrize('files', [
    {'tokenizer.json': '{}'}, {'tokenizer.json': 'not json'},
    {'tokenizer.model': 'garbage'},
    {'tokenizer.json': json.dumps({'kind': 'byte'})[:-1]},
])
def test_a_damaged_tokenizer_is_one_error(tmp_path, files):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  (tmp_path / 'tokenizer_config.json').write_text('{"pad_token": 5}')
  for load in (tokenizers.load_tokenizer, tokenizer_files.find_tokenizer):
    with pytest.raises(UsageError, match=str(tmp_path)):
      load(str(tmp_path))


@pytest.mark.parametrize('text', ['[1, 2]', '{"model": null}', '"model"'])
def test_a_config_json_of_the_wrong_shape_is_one_error(tmp_path, text):
  (tmp_path / 'config.json').write_text(text)
  with pytest.raises(UsageError, match='no model section'):
    config_file.load_config(str(tmp_path))


@pytest.mark.parametrize('text', ['[3]', '{}', '{"train_examples": "9"}',
                                  '{"train_examples": 0}',
                                  '{"train_examples": true}'])
def test_a_damaged_train_data_record_is_one_error(tmp_path, text):
  (tmp_path / 'train_data.json').write_text(text)
  with pytest.raises(UsageError, match='train'):
    train_data_file.train_examples(str(tmp_path))


def test_sampling_settings_out_of_range_are_refused():
  for settings, words in (
      (sampling.SamplingConfig(temperature=float('nan')), 'finite'),
      (sampling.SamplingConfig(temperature=float('inf')), 'finite'),
      (sampling.SamplingConfig(top_k=300), 'exceeds the vocabulary')):
    with pytest.raises(UsageError, match=words):
      settings.validate(vocab_size=260)
  with pytest.raises(UsageError, match='64 bits'):
    sampling.check_seed(2**64)
  assert sampling.check_seed(2**64 - 1) == 2**64 - 1


def test_every_model_has_a_context_limit():
  # A rotary model's memory grows with the prompt: its max_len bounds it,
  # before anything is compiled.
  config = ModelConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=2,
                       d_ff=32, position='rotary', max_len=16)
  assert config.context_limit == 16
  model = registry.build_model(config)
  with pytest.raises(UsageError, match='exceeds the model.s context of 16'):
    generate.generate(model, None, [[1] * 10],
                      sampling=sampling.SamplingConfig(max_new_tokens=10),
                      rng=np.zeros(2, np.uint32), eos_id=None,
                      max_len=config.context_limit)


def test_text_too_long_to_embed_is_refused_not_cut():
  config = ModelConfig(family='encoder', vocab_size=260, d_model=16,
                       num_layers=1, num_heads=2, d_ff=32, max_len=8)
  with pytest.raises(UsageError, match='text 2 is 12 tokens long; the model '
                     'takes at most 8'):
    embed_texts(config, None, tokenizers.ByteTokenizer(),
                ['short', 'eleven char'])


def test_a_missing_extra_is_named_with_the_command_that_installs_it():
  from lm import errors  # pylint: disable=g-import-not-at-top
  errors.require('serve', 'json')  # Installed: nothing to say.
  with pytest.raises(UsageError, match=r"^lm_no_such_module is not installed: "
                     r"lm's 'plots' extra brings it \(pip install -e "
                     r"'\.\[plots\]'"):
    errors.require('plots', 'lm_no_such_module')
  with pytest.raises(UsageError, match='lm_a and lm_b are not installed'):
    errors.require('serve', 'lm_a', 'lm_b')


def test_files_are_replaced_whole_and_never_written_through_a_link(tmp_path):
  from lm.io import files  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'eval.json'
  files.write_atomic(str(path), 'old')
  files.write_atomic(str(path), b'new')
  assert path.read_text() == 'new'
  assert os.listdir(tmp_path) == ['eval.json']  # No temporary left behind.
  target = tmp_path / 'elsewhere.txt'
  target.write_text('mine')
  link = tmp_path / 'link.json'
  link.symlink_to(target)
  with pytest.raises(UsageError, match='is a symbolic link'):
    files.write_atomic(str(link), 'written through')
  assert target.read_text() == 'mine' and link.is_symlink()
