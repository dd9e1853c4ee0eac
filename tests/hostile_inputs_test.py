"""Hostile paths, files, templates and settings: each is one UsageError
naming the problem, found before any work, in bounded time and memory."""

import json
import os
import struct
import time

import jax
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
from lm.io import layout
from lm.io.lock import WorkdirLock
from lm.io import outputs
from lm.io import paths
from lm.io import train_data_file
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train import config as run_config


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


def test_only_lm_s_own_leftover_partial_folders_are_deleted(tmp_path):
  staging = tmp_path / f'out.partial-{os.getpid()}'
  staging.mkdir()
  (staging / 'thesis.tex').write_text('years of work')
  (tmp_path / 'elsewhere').mkdir()
  for planted in ('folder', 'link'):
    if planted == 'link':
      staging.rename(tmp_path / 'elsewhere' / 'kept')
      staging.symlink_to(tmp_path / 'elsewhere' / 'kept')
    with pytest.raises(UsageError, match='not made by lm'):
      with outputs.building(str(tmp_path / 'out')):
        pass
  assert (tmp_path / 'elsewhere' / 'kept' / 'thesis.tex').read_text() == (
      'years of work')
  # A partial folder lm left (its marker inside) is cleared and rebuilt.
  staging.unlink()
  staging.mkdir()
  (staging / layout.PARTIAL).write_text('')
  (staging / 'stale').write_text('')
  with outputs.building(str(tmp_path / 'out')) as building:
    open(os.path.join(building, 'fresh'), 'w').close()
  assert os.listdir(tmp_path / 'out') == ['fresh']
  assert not os.path.lexists(staging)


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
    # Inside Jinja's built-ins, and in its compiler.
    ("{{ ('x' * 999999) | replace('x', 'y' * 999) }}", 'more than 1,000,000'),
    ("{{ 'x' | center(10 ** 9) }}", 'more than 1,000,000'),
    ("{{ ('x\n' * 400000) | indent(1000) }}", 'more than 1,000,000'),
    ('{{ lipsum(1000000) }}', "'lipsum' is undefined"),
    ('x' * 200_000, 'at most 100,000'),
    ('{% if true %}' * 3000 + '{% endif %}' * 3000, 'does not parse'),
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
  # A key holds 32 bits of a seed: 2**32 and -1 would repeat seeds 0 and
  # 2**32 - 1, so they are refused, and every seed taken has its own key.
  assert np.array_equal(jax.random.key_data(jax.random.PRNGKey(2**32)),
                        jax.random.key_data(jax.random.PRNGKey(0)))
  for seed in (2**32, 2**63, 2**64, -1, -2**63 - 1):
    with pytest.raises(UsageError, match=r'not in \[0, 4294967295\]'):
      sampling.check_seed(seed)
  assert sampling.check_seed(2**32 - 1) == 2**32 - 1
  keys = {tuple(np.asarray(jax.random.key_data(jax.random.PRNGKey(seed))))
          for seed in (0, 1, 2**31, 2**32 - 1)}
  assert len(keys) == 4


def test_config_seeds_are_the_sampler_s_range(tiny):
  for section in ('train', 'sample'):
    config = tiny.copy_and_resolve_references()
    config[section].seed = 2**32
    with pytest.raises(UsageError, match=f'{section}.seed 4294967296 is not'):
      run_config.validate(config)


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


@pytest.mark.parametrize('plant', ['link', 'fifo', 'folder'])
def test_a_lock_file_planted_in_the_workdir_is_refused_untouched(tmp_path,
                                                                  plant):
  """A link at <workdir>/.lock would have its target truncated by the
  holder's line; a FIFO would block the run."""
  victim = tmp_path / 'victim.txt'
  victim.write_text('the user\'s notes\n')
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  planted = workdir / '.lock'
  {'link': lambda: planted.symlink_to(victim), 'fifo': lambda: os.mkfifo(
      planted), 'folder': planted.mkdir}[plant]()
  with pytest.raises(UsageError, match=r'\.lock (is a symbolic link|is not '
                     r'a regular file|cannot be opened).*another --workdir'):
    with WorkdirLock(str(workdir)):
      pass
  assert victim.read_text() == 'the user\'s notes\n'
  # A plain workdir's lock is taken, and a second holder is refused.
  other = tmp_path / 'other'
  other.mkdir()
  with WorkdirLock(str(other)):
    with pytest.raises(UsageError, match='in use by another run'):
      with WorkdirLock(str(other)):
        pass


def test_an_output_inside_its_own_source_is_refused(tmp_path):
  """compress or export into the source workdir's own folders would change
  (or break) the workdir it reads."""
  from lm import convert  # pylint: disable=g-import-not-at-top
  from lm.compress import workdirs  # pylint: disable=g-import-not-at-top
  source = tmp_path / 'source'
  (source / 'checkpoints').mkdir(parents=True)
  (tmp_path / 'via').symlink_to(source)
  for output in (source / 'checkpoints' / 'int8', source / 'new',
                 tmp_path / 'via' / 'new'):
    with pytest.raises(UsageError, match='lies inside'):
      workdirs.quantize_workdir(str(source), str(output), 'int8')
    with pytest.raises(UsageError, match='lies inside'):
      convert.export_workdir(str(source), str(output))
  assert sorted(os.listdir(source)) == ['checkpoints']
  assert os.listdir(source / 'checkpoints') == []
  # Beside it is fine (as far as this check goes).
  paths.new_directory(str(tmp_path / 'source_int8'), source=str(source))


def test_a_folder_of_someone_s_files_does_not_become_a_workdir(tmp_path,
                                                               tiny):
  from lm.train import loop  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'papers'
  folder.mkdir()
  (folder / 'thesis.tex').write_text('years of work')
  (folder / 'tokenizer.model').write_text('their own tokenizer')
  before = {p.name: p.read_text() for p in folder.iterdir()}
  with pytest.raises(UsageError, match=r'not a workdir and not empty \(it '
                     r'holds thesis.tex\)'):
    loop.train_and_evaluate(tiny, str(folder))
  assert {p.name: p.read_text() for p in folder.iterdir()} == before
  # A folder holding only what lm writes (a first run that stopped before
  # its config) or a config.json (a workdir) is lm's.
  started = tmp_path / 'started'
  (started / 'tensorboard').mkdir(parents=True)
  (started / '.lock').write_text('')
  assert layout.foreign_entries(str(started)) == []
  (folder / 'config.json').write_text('{}')
  assert layout.foreign_entries(str(folder)) == []


def test_a_tokenizer_larger_than_the_model_is_refused_at_load(tmp_path, tiny):
  """Its larger ids would index past the embedding table: generate once
  wrote empty text and the server answered 500."""
  from lm import restore  # pylint: disable=g-import-not-at-top
  tiny.model.vocab_size = 100
  config_file.save_config(tiny, str(tmp_path))
  tokenizers.ByteTokenizer().save(str(tmp_path))
  with pytest.raises(UsageError, match=r'tokenizer has 260 tokens but the '
                     'model embeds only 100'):
    restore.workdir(str(tmp_path))


def test_a_step_folder_no_run_could_write_is_named(tmp_path, tiny):
  """A folder named 99999999999999999999 in checkpoints/ was taken as the
  latest step, and the run then stuck on it."""
  from lm.io import checkpoint  # pylint: disable=g-import-not-at-top
  from lm.train import config as train_config  # pylint: disable=g-import-not-at-top
  (tmp_path / 'checkpoints' / '99999999999999999999').mkdir(parents=True)
  with pytest.raises(UsageError, match='99999999999999999999 is not a '
                     'checkpoint lm wrote'):
    checkpoint.Checkpointer(str(tmp_path), read_only=True).latest_step()
  tiny.train.num_steps = layout.MAX_STEP + 1
  with pytest.raises(UsageError, match='more than the 1,000,000,000,000'):
    train_config.validate(tiny)
