"""Hundreds of malformed files, derived from real ones, each refused in one
line: never a traceback, never more than 2 GB of memory, and no file
changed outside the case's own directory (nor inside it: every case fails).

The files: a GGUF carrying SmolLM2's real metadata (its keys, tokenizer
kind, special tokens and chat template, the first 512 tokens) around a
small model; all-MiniLM-L6-v2's real config.json and tokenizer.json around
small safetensors; the real files' own first bytes; and workdirs written
by lm. tests/file_cases.py mutates each along its structure. The cases run
in one process (tests/fuzz_runner.py) whose address space is capped.
"""

import json
import os
import shutil

import pytest

from configs import base
from lm import convert
from lm.convert import packaged
from lm.io import layout
from tests import file_cases
from tests.cli_helpers import run_cases
from tests.cli_helpers import snapshot
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

MEMORY_LIMIT = 2 << 30


def _safetensors_dir_cases(mini_dir):
  """{name: {file name in the directory: new content}}."""
  with open(os.path.join(mini_dir, 'model.safetensors'), 'rb') as f:
    weights = f.read()
  with open(os.path.join(mini_dir, 'config.json')) as f:
    config = f.read()
  with open(os.path.join(mini_dir, 'tokenizer.json')) as f:
    tokenizer = f.read()
  cases = {f'safetensors {k}': {'model.safetensors': v}
           for k, v in file_cases.safetensors_cases(weights).items()}
  cases.update({f'config.json {k}': {'config.json': v}
                for k, v in file_cases.json_cases(config, [
                    'model_type', 'hidden_size', 'num_attention_heads',
                    'num_hidden_layers', 'intermediate_size', 'vocab_size',
                    'max_position_embeddings']).items()})
  cases.update({f'tokenizer.json {k}': {'tokenizer.json': v}
                for k, v in file_cases.json_cases(tokenizer,
                                                  ['model']).items()})
  # A tokenizer with more tokens than the weights embed.
  larger = json.loads(tokenizer)
  vocab = larger['model']['vocab']
  vocab.update({f'extra{i}': len(vocab) + i for i in range(100)})
  cases['tokenizer.json larger than the model'] = {
      'tokenizer.json': json.dumps(larger).encode()}
  return cases


def _link_or_write(case_dir, baseline_dir, changed):
  """The baseline directory's files, hard-linked, but those in `changed`."""
  os.makedirs(case_dir)
  for name in os.listdir(baseline_dir):
    if name not in changed:
      os.link(os.path.join(baseline_dir, name), os.path.join(case_dir, name))
  for name, content in changed.items():
    file_cases.write(os.path.join(case_dir, name), content)


def _latest_step_file(suffix, content, under=''):
  """A workdir mutation: the largest file of the latest checkpoint (in its
  folder `under`) whose path ends with `suffix` gets `content` (None: is
  removed)."""
  def mutate(workdir):
    root = os.path.join(workdir, 'checkpoints')
    latest = os.path.join(root, str(max(int(n) for n in os.listdir(root)
                                        if n.isdigit())))
    found = [os.path.join(folder, name)
             for folder, _, names in os.walk(os.path.join(latest, under))
             for name in names
             if os.path.join(folder, name).endswith(suffix)]
    assert found, f'no checkpoint file ends with {suffix}'
    path = max(found, key=os.path.getsize)
    if content is None:
      os.remove(path)
    else:
      file_cases.write(path, content(path) if callable(content) else content)
  return mutate


def _flip_a_byte(path):
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  data[len(data) // 2] ^= 0xFF
  return bytes(data)


def _workdir_mutations(workdir):
  """{name: function that damages a copy of the workdir}."""
  with open(os.path.join(workdir, layout.CONFIG)) as f:
    config = json.load(f)

  def config_with(section, **changes):
    new = json.loads(json.dumps(config))
    new[section].update(changes)
    return lambda w: file_cases.write(os.path.join(w, layout.CONFIG),
                                      json.dumps(new).encode())

  def set_file(name, content):
    return lambda w: file_cases.write(os.path.join(w, name), content)

  def replace_with_link(name, target):
    def mutate(w):
      path = os.path.join(w, name)
      (shutil.rmtree if os.path.isdir(path) else os.remove)(path)
      os.symlink(target, path)
    return mutate

  model = config['model']
  sealed = os.path.join('checkpoints', layout.SEALED_STEPS)
  # A config without a data section, or with unknown keys in it, is
  # complete: the defaults fill it.
  mutations = {f'config.json {k}': set_file(layout.CONFIG, v)
               for k, v in file_cases.json_cases(
                   json.dumps(config), ['model', 'data']).items()
               if k not in ('no data', 'data={"a": 1}')}
  mutations.update({
      f'model.{key} differs from the checkpoint': config_with(
          'model', **{key: model[key] * 2})
      for key in ('d_model', 'd_ff', 'num_layers', 'vocab_size')})
  mutations.update({
      'model.family unknown': config_with('model', family='nope'),
      'model.num_heads 0': config_with('model', num_heads=0),
      'model.dtype unknown': config_with('model', dtype='float5'),
      'tokenizer deleted': lambda w: os.remove(
          os.path.join(w, layout.JSON_TOKENIZER)),
      'config.json is /dev/zero': replace_with_link(layout.CONFIG,
                                                    '/dev/zero'),
      'config.json is a folder': lambda w: (
          os.remove(os.path.join(w, layout.CONFIG)),
          os.mkdir(os.path.join(w, layout.CONFIG))),
      'checkpoints is a dangling link': replace_with_link(
          'checkpoints', '/nowhere/checkpoints'),
      'checkpoints is a file': lambda w: (
          shutil.rmtree(os.path.join(w, 'checkpoints')),
          file_cases.write(os.path.join(w, 'checkpoints'), b'x')),
      'checksums deleted': _latest_step_file('lm_checksums.json', None),
      'checksums not JSON': _latest_step_file('lm_checksums.json', b'{"a'),
      'checksums a list': _latest_step_file('lm_checksums.json', b'[1]'),
      'checksums of another file': _latest_step_file(
          'lm_checksums.json', b'{"nope": "00"}'),
      # A damaged ledger alone is no damage: the manifests still check
      # every file. Without the manifest, the step cannot be trusted.
      'sealed steps not JSON, checksums deleted': lambda w: (
          set_file(sealed, b'[1,')(w),
          _latest_step_file('lm_checksums.json', None)(w)),
      'sealed steps an object, checksums deleted': lambda w: (
          set_file(sealed, b'{"a": 1}')(w),
          _latest_step_file('lm_checksums.json', None)(w)),
      'checkpoint metadata gone': _latest_step_file('_CHECKPOINT_METADATA',
                                                    None),
      'a flipped byte in the params': _latest_step_file('', _flip_a_byte,
                                                        'params'),
      'params truncated': _latest_step_file('', b'', 'params'),
  })
  return mutations


@pytest.fixture(scope='module')
def real():
  return {'gguf': packaged.path('smollm2'), 'minilm': packaged.path('minilm')}


def build_cases(real, float_workdir, tmp_path):
  """[(case name, script, argv)] over case folders made under
  `tmp_path`."""
  baseline = tmp_path / 'baseline'
  baseline.mkdir()
  mini_gguf = str(baseline / 'mini.gguf')
  file_cases.write_mini_gguf(real['gguf'], mini_gguf)
  mini_minilm = str(baseline / 'minilm')
  file_cases.write_mini_safetensors_dir(real['minilm'], mini_minilm)
  # The baselines import: each case fails by its mutation alone.
  chat_workdir = str(baseline / 'chat_workdir')
  encoder_workdir = str(baseline / 'encoder_workdir')
  convert.import_checkpoint(mini_gguf, chat_workdir, base.get_base_config())
  convert.import_checkpoint(mini_minilm, encoder_workdir,
                            base.get_base_config())

  cases = []  # (case name, script, argv)

  def case_dir(name):
    path = str(tmp_path / 'cases' / f'{len(cases):04d}')
    assert not os.path.exists(path), name
    return path

  with open(mini_gguf, 'rb') as f:
    gguf_bytes = f.read()
  with open(real['gguf'], 'rb') as f:
    real_head = f.read(2_000_000)
  gguf_files = file_cases.gguf_cases(gguf_bytes)
  # The real file's own bytes, cut inside its header, metadata and tensor
  # descriptions.
  for cut in (24, 10_000, 1_000_000, 1_785_000):
    gguf_files[f'real SmolLM2 GGUF cut at {cut}'] = real_head[:cut]
  for name, content in gguf_files.items():
    folder = case_dir(name)
    file_cases.write(os.path.join(folder, 'model.gguf'), content)
    cases.append((f'GGUF {name}', 'experiments.convert', [
        f'--source={folder}/model.gguf', f'--workdir={folder}/out']))

  with open(os.path.join(real['minilm'], 'model.safetensors'), 'rb') as f:
    real_weights_head = f.read(100_000)
  directory_cases = _safetensors_dir_cases(mini_minilm)
  for cut in (8, 5_000, 100_000):
    directory_cases[f'real MiniLM safetensors cut at {cut}'] = {
        'model.safetensors': real_weights_head[:cut]}
  for name, changed in directory_cases.items():
    folder = case_dir(name)
    _link_or_write(folder, mini_minilm, changed)
    cases.append((name, 'experiments.convert', [f'--source={folder}',
                                                f'--workdir={folder}/out']))

  def workdir_cases(source, mutations, argvs):
    for name, mutate in mutations.items():
      folder = case_dir(name)
      shutil.copytree(source, folder, symlinks=True)
      mutate(folder)
      for script, argv in argvs(folder):
        cases.append((f'workdir {name}', script, argv))

  workdir_cases(float_workdir, _workdir_mutations(float_workdir), lambda w: [
      ('experiments.generate', [f'--workdir={w}', '--prompt=hi',
                                '--max_new_tokens=2']),
      ('experiments.export', [f'--workdir={w}', f'--output={w}/hf']),
      ('experiments.compress', [f'--workdir={w}', '--method=int8',
                                f'--output={w}/q'])])
  # Scoring reads the data's tokenizer, not the workdir's.
  workdir_cases(float_workdir, {
      k: v for k, v in _workdir_mutations(float_workdir).items()
      if k != 'tokenizer deleted'}, lambda w: [
          ('experiments.evaluate', [f'--workdir={w}', '--max_batches=1'])])
  with open(os.path.join(chat_workdir, 'tokenizer_config.json')) as f:
    tokenizer_config = json.load(f)
  templates = {
      'syntax error': '{% for m in messages %}{{ m.content }',
      'raises': "{{ raise_exception('no system role') }}",
      'nested loops': '{% for a in range(100000) %}{% for b in range(100000) '
                      '%}x{% endfor %}{% endfor %}',
      'huge output': "{{ 'x' * 100000000 }}",
      'attribute escape': '{{ messages.__class__.__mro__ }}',
      'not a string': 7}
  chat_mutations = {
      f'chat template {k}': (lambda w, t=t: file_cases.write(
          os.path.join(w, 'tokenizer_config.json'),
          json.dumps({**tokenizer_config, 'chat_template': t}).encode()))
      for k, t in templates.items()}
  with open(os.path.join(chat_workdir, 'tokenizer.json')) as f:
    chat_tokenizer = f.read()
  chat_mutations.update({
      f'tokenizer.json {k}': (lambda w, v=v: file_cases.write(
          os.path.join(w, 'tokenizer.json'), v))
      for k, v in file_cases.json_cases(chat_tokenizer, ['model']).items()})
  chat_mutations['tokenizer.json is a pipe'] = lambda w: (
      os.remove(os.path.join(w, 'tokenizer.json')),
      os.mkfifo(os.path.join(w, 'tokenizer.json')))
  workdir_cases(chat_workdir, chat_mutations, lambda w: [
      ('experiments.generate', [f'--workdir={w}', '--prompt=hi', '--chat',
                                '--max_new_tokens=2'])])
  encoder_mutations = {
      k: v for k, v in _workdir_mutations(encoder_workdir).items()
      if k.startswith(('model.', 'config.json', 'checksums'))}
  workdir_cases(encoder_workdir, encoder_mutations, lambda w: [
      ('experiments.embed', [f'--workdir={w}', '--text=hello'])])

  return cases


def test_malformed_files_get_one_line_errors(real, float_workdir, tmp_path):
  cases = build_cases(real, float_workdir, tmp_path)
  before = _files_but_locks(tmp_path)
  root_before = sorted(os.listdir(ROOT))
  results = run_cases([case[1:] for case in cases],
                      memory_limit=MEMORY_LIMIT)
  assert len(results) >= 300, len(results)
  bad = []
  for (name, script, argv), run in zip(cases, results):
    errors = [l for l in run['stderr'].splitlines() if l.startswith('error: ')]
    if (run['crash'] or run['code'] == 0 or 'Traceback' in run['stderr']
        or len(errors) != 1):
      bad.append(f"{name}: {script} {argv}: code {run['code']}, "
                 f"stderr {run['stderr'][-400:]!r}, "
                 f"crash {(run['crash'] or '')[-1200:]}")
  assert not bad, f'{len(bad)} of {len(results)} cases:\n' + '\n\n'.join(
      bad[:20])
  assert _files_but_locks(tmp_path) == before
  assert sorted(os.listdir(ROOT)) == root_before


def _files_but_locks(directory):
  return {path: stat for path, stat in snapshot(directory).items()
          if os.path.basename(path) != '.lock'}
