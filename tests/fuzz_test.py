"""Every script, fed hundreds of malformed invocations, refuses each with
one line ('error: ...') and a non-zero exit: never a traceback, never a
changed workdir.

The cases run in one process (tests/fuzz_runner.py). Each case is a valid
invocation with one known-bad change (a flag value of the wrong type or
out of range, an unknown flag or config key, a missing, empty, binary or
malformed file, a workdir of the wrong kind), and some add random junk
flags on top.
"""

import os
import random
import shutil
import sys

import pytest

from lm.io import layout
from tests.cli_helpers import overrides
from tests.cli_helpers import run_cases
from tests.cli_helpers import snapshot
from tests.conftest import ROOT
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

# Values of the wrong type for every integer / float flag.
_NOT_INT = ['abc', '1.5', '', '0x', '--']
_NOT_FLOAT = ['abc', '', '1,5', '--']
# Junk for the random cases: flag names the scripts lack, odd values.
_JUNK_VALUES = ['', '-1', 'nan', 'inf', '1e400', 'None', '[1, 2]', 'é🙂',
                'x' * 5000, '../../..', '%s%n']


def _files(tmp):
  """Malformed files of every kind, by name."""
  paths = {'missing': str(tmp / 'missing' / 'file'), 'dir': str(tmp / 'dir'),
           'empty': str(tmp / 'empty.txt'), 'binary': str(tmp / 'binary.bin'),
           'syntax_error.py': str(tmp / 'syntax_error.py'),
           'no_get_config.py': str(tmp / 'no_get_config.py'),
           'binary.py': str(tmp / 'binary.py'),
           'raises.py': str(tmp / 'raises.py'),
           'not_a_workdir': str(tmp / 'not_a_workdir'),
           'bad_json_workdir': str(tmp / 'bad_json_workdir'),
           'existing_output': str(tmp / 'existing_output')}
  os.makedirs(paths['dir'])
  os.makedirs(paths['not_a_workdir'])
  os.makedirs(paths['bad_json_workdir'])
  os.makedirs(paths['existing_output'])
  contents = {'empty': b'', 'binary': bytes(range(256)) * 4,
              'syntax_error.py': b'def get_config(:\n',
              'no_get_config.py': b'X = 1\n',
              'binary.py': b'\xff\xfe\x00\x81' * 64,
              'raises.py': b'def get_config():\n  raise RuntimeError("x")\n'}
  for name, data in contents.items():
    with open(paths[name], 'wb') as f:
      f.write(data)
  with open(os.path.join(paths['bad_json_workdir'],
                         layout.CONFIG), 'wb') as f:
    f.write(b'{"model": ')
  with open(os.path.join(paths['existing_output'], 'keep.txt'), 'w') as f:
    f.write('not to be overwritten')
  # Outputs that are links (to a real folder, and to nothing), a name too
  # long for the file system, and a pipe no reader should wait on.
  paths['link_target'] = str(tmp / 'link_target')
  os.makedirs(paths['link_target'])
  paths['link_output'] = str(tmp / 'link_output')
  os.symlink(paths['link_target'], paths['link_output'])
  paths['dangling_output'] = str(tmp / 'dangling_output')
  os.symlink(str(tmp / 'nowhere'), paths['dangling_output'])
  paths['long_name'] = str(tmp / ('n' * 300))
  paths['fifo'] = str(tmp / 'fifo')
  os.mkfifo(paths['fifo'])
  return paths


def _config_cases(base, files):
  """Bad --config files and overrides, for scripts that take a config."""
  cases = [[f'--config={files[name]}'] + base[1:] for name in (
      'missing', 'dir', 'empty', 'binary', 'syntax_error.py',
      'no_get_config.py', 'binary.py', 'raises.py')]
  cases.append(['--config=configs/default.py:no_such_preset'] + base[1:])
  overrides = [
      'train.num_steps=abc', 'train.num_steps=-1', 'train.num_steps=0',
      'no_such_key=1', 'model.no_such_key=1', 'model.d_model=0',
      'model.d_model=-8', 'model.num_heads=0', 'model.num_heads=7',
      'model.num_layers=0', 'model.vocab_size=0', 'model.family=nope',
      'model.position=nope', 'model.dropout_rate=1.5', 'model.dtype=nope',
      'model.num_experts=1', 'data.seq_len=0', 'data.seq_len=-5',
      'data.batch_size=0', 'data.batch_size=-3', 'data.name=nope',
      'data.tokenizer=nope', 'data.objective=nope', 'optim.name=nope',
      'optim.learning_rate=-1', 'optim.learning_rate=abc',
      'train.log_every=0', 'train.keep_checkpoints=0',
      'train.max_nonfinite_steps=0', 'mesh.shape=(3,)', 'mesh.shape=(0,)',
      'mesh.shape=(-1,-1)', 'train.grad_accum_steps=0', 'model.max_len=0']
  cases += [base + [f'--config.{o}'] for o in overrides]
  return cases


def _typed_cases(base, int_flags=(), float_flags=(), bad=()):
  """Wrong types for the integer and float flags, and known-bad values."""
  cases = [base + [f'--{name}={v}'] for name in int_flags for v in _NOT_INT]
  cases += [base + [f'--{name}={v}'] for name in float_flags
            for v in _NOT_FLOAT]
  cases += [base + [f'--{flag}'] for flag in bad]
  return cases


def _cases(files, workdir, data_dir):
  """{script: [argv, ...]}, every one malformed."""
  train_base = ['--config=configs/default.py', f'--workdir={files["dir"]}/w',
                f'--config.data.data_dir={data_dir}',
                '--config.train.num_steps=2', '--config.optim.warmup_steps=1']
  cases = {
      'experiments.train': _config_cases(train_base, files) + [
          ['--config=configs/default.py'],  # No --workdir.
          train_base[:1] + [f'--workdir={files["empty"]}'] + train_base[2:],
          # The workdir holds another model (wrong checkpoint family).
          train_base[:1] + [f'--workdir={workdir}'] + train_base[2:],
          train_base + ['--num_processes=2'],
          train_base + ['--coordinator_address=localhost:1',
                        '--num_processes=2', '--process_id=5'],
      ] + _typed_cases(train_base, ['num_processes', 'process_id']),
      'experiments.generate': _typed_cases(
          [f'--workdir={workdir}', '--prompt=ROMEO:'],
          ['max_new_tokens', 'top_k', 'seed'], ['temperature', 'top_p'],
          ['max_new_tokens=0', 'max_new_tokens=-3',
           'max_new_tokens=1000000000', 'temperature=-1', 'top_k=-1',
           'top_p=0', 'top_p=1.5', 'top_p=nan', 'prompt=', 'mesh=a,b',
           'temperature=nan', 'temperature=inf', 'top_k=100000',
           'seed=99999999999999999999999', 'prompt=\udcffab',
           'mesh=3', 'mesh=0', 'mesh=1,1,1,1,1', 'chat']) + [
               [f'--workdir={files[name]}', '--prompt=x'] for name in (
                   'missing', 'empty', 'dir', 'not_a_workdir',
                   'bad_json_workdir')] + [
               [f'--workdir={workdir}', '--prompt=' + 'O Romeo ' * 100]],
      'experiments.evaluate': _typed_cases(
          [f'--workdir={workdir}'], ['beam_size', 'max_examples',
                                     'max_batches'], [],
          ['split=nope', 'split=', 'beam_size=0', 'beam_size=-1',
           'max_examples=-1', 'max_batches=-1']) + [
               [f'--workdir={files[name]}'] for name in (
                   'missing', 'empty', 'not_a_workdir', 'bad_json_workdir')] + [
               [f'--workdir={workdir}', f'--task={files[name]}'] for name in (
                   'missing', 'empty', 'syntax_error.py', 'raises.py')] + [
               # A decoder asked for an encoder-decoder task.
               [f'--workdir={workdir}', '--task=configs/summarization.py',
                '--split=test']],
      'experiments.export': [
          [f'--workdir={workdir}', f'--output={files["existing_output"]}'],
          [f'--workdir={workdir}', f'--output={files["empty"]}'],
          [f'--workdir={files["not_a_workdir"]}', f'--output={files["dir"]}/o'],
          [f'--workdir={files["bad_json_workdir"]}',
           f'--output={files["dir"]}/o'],
          [f'--workdir={workdir}']],
      'experiments.weights': [[], ['nope'], ['minilm', 'smollm2'],
                              ['--bogus=1']],
      'experiments.embed': [
          [f'--workdir={workdir}', '--text=hello'],  # A decoder, not encoder.
          [f'--workdir={files["not_a_workdir"]}', '--text=hello'],
          [f'--workdir={files["missing"]}', '--text=hello'],
          [f'--workdir={workdir}']],
      'experiments.compress': _typed_cases(
          [f'--workdir={workdir}', '--method=prune',
           f'--output={files["dir"]}/c'],
          ['group', 'bits', 'decode_tokens'], ['sparsity'],
          ['sparsity=1.5', 'sparsity=-0.1', 'pattern=x:y', 'pattern=5:4',
           'pattern=none', 'method=nope', f'output={files["existing_output"]}',
           f'workdir={files["not_a_workdir"]}']) + [
               [f'--workdir={workdir}', '--method=int8'],  # No --output.
               [f'--workdir={workdir}', '--method=int4', '--group=0',
                f'--output={files["dir"]}/q'],
               [f'--workdir={workdir}', '--method=int4', '--group=-4',
                f'--output={files["dir"]}/q'],
               [f'--workdir={workdir}', '--method=deep_compression',
                '--bits=0', f'--output={files["dir"]}/d'],
               [f'--workdir={workdir}', '--method=deep_compression',
                '--bits=40', f'--output={files["dir"]}/d'],
               [f'--workdir={workdir}', '--method=merge_lora',
                f'--output={files["dir"]}/m'],  # It has no adapters.
               [f'--report={files["missing"]}'],
               [f'--report={workdir},{files["not_a_workdir"]}'],
               [f'--report={workdir}', '--names=a,b']],
      'experiments.convert': [
          [f'--source={files[name]}', f'--workdir={files["dir"]}/imp']
          for name in ('missing', 'dir', 'empty', 'binary', 'raises.py')] + [
              [f'--source={files["binary"]}',
               f'--workdir={files["existing_output"]}'],
              [f'--workdir={files["dir"]}/imp']],
      'benchmarks.decode_speed': _config_cases(
          ['--config=configs/default.py'], files) + _typed_cases(
              ['--config=configs/default.py'],
              ['prompt_len', 'max_new_tokens'], [],
              ['prompt_len=0', 'prompt_len=-1', 'max_new_tokens=0',
               'max_new_tokens=-2']),
      'experiments.compile': [
          [], ['--config=configs/default.py'],
          ['--config=configs/default.py', '--topology=nope'],
          ['--config=configs/default.py', '--topology=v9:2x2'],
          ['--config=configs/default.py', '--topology=v5e:2x2',
           '--programs=serve'],
          ['--config=configs/default.py', '--topology=v5e:2x2',
           '--programs=']],
      'experiments.memory': _config_cases(
          ['--config=configs/default.py', '--variants=loop:none'], files)[:20]
                            + [['--config=configs/default.py',
                                f'--variants={v}']
                               for v in ('nope', 'loop', 'scan:nope', ':')],
      'experiments.ngram_baseline': _config_cases(
          ['--config=configs/default.py'], files)[:12] + _typed_cases(
              ['--config=configs/default.py'], ['order'], ['discount'],
              ['order=0', 'order=-1', 'discount=0', 'discount=1.5',
               'discount=-1', 'discount=nan']),
      'benchmarks.benchmark': _config_cases(
          ['--config=configs/bench/gpt_cpu.py'], files)[:20] + _typed_cases(
              ['--config=configs/bench/gpt_cpu.py', '--sweep'],
              ['sweep_batch', 'sweep_steps'], [],
              ['sweep_batch=0', 'sweep_steps=0', 'seq_lens=abc',
               'seq_lens=0', 'seq_lens=', 'layer_counts=0',
               'layer_counts=x']) + [
                   ['--config=configs/bench/gpt_cpu.py', '--only=nope'],
                   ['--config=configs/bert.py']],
      'experiments.plot': [
          [f'--workdir={files["missing"]}', f'--out={files["dir"]}/c.png'],
          [f'--workdir={files["not_a_workdir"]}',
           f'--out={files["dir"]}/c.png'],
          [f'--workdir={workdir}', f'--out={files["dir"]}/c.txt'],
          [f'--workdir={workdir}', f'--out={files["missing"]}/c.png'],
          [f'--workdir={workdir}', '--metrics=eval/nope',
           f'--out={files["dir"]}/c.png'],
          [f'--workdir={workdir}', '--metrics=', f'--out={files["dir"]}/c.png'],
          [f'--workdir={workdir}', f'--workdir={workdir}', '--names=a',
           f'--out={files["dir"]}/c.png'],
          [f'--workdir={workdir}'], [f'--out={files["dir"]}/c.png']],
      'benchmarks.torch_peer': [
          [f'--config={files[name]}'] for name in (
              'missing', 'empty', 'syntax_error.py', 'no_get_config.py')] + [
                  ['--config=configs/bench/gpt_cpu.py', '--only=nope'],
                  ['--config=configs/bench/gpt_cpu.py',
                   '--config.model.d_model=0'],
                  ['--config=configs/bert.py']],
      'benchmarks.kernel_peers': [
          [f'--config={files[name]}'] for name in (
              'missing', 'empty', 'syntax_error.py', 'no_get_config.py')] + [
                  ['--config=configs/bench/gpt_cpu.py', '--repeats=0'],
                  ['--config=configs/bench/gpt_cpu.py', 'extra'],
                  ['--config=configs/bert.py'],
                  ['--config=configs/moe.py']],
      'experiments.serve': [
          [f'--workdir={files[name]}'] for name in (
              'missing', 'empty', 'not_a_workdir', 'bad_json_workdir')] + [
                  [f'--workdir={workdir}', f'--{flag}']
                  for flag in ('slots=0', 'slots=abc', 'port=70000',
                               'port=-1', 'context=8', 'context=x',
                               'warm_up=-1', 'warm_up=x',
                               'host=', 'bogus=1')] + [['--workdir=']],
      'experiments.chat': [
          [f'--workdir={workdir}'],  # A byte tokenizer: no chat template.
          [f'--workdir={files["missing"]}'], ['--workdir='],
          [f'--workdir={files["not_a_workdir"]}']] + [
              [f'--workdir={workdir}', f'--{flag}']
              for flag in ('max_new_tokens=0', 'temperature=-1',
                           'context=4', 'seed=x', 'top_p=abc')],
      'tools.lm_eval_tasks': [
          [], ['stray'], [f'--output={files["existing_output"]}'],
          [f'--output={files["dir"]}/tasks',
           f'--wordnet_dir={files["missing"]}'],
          [f'--output={files["binary"]}/tasks']],
      'benchmarks.serve_benchmark': [
          [], ['--lm=fp32'], ['--lm==x'], [f'--lm=a={files["missing"]}'],
          [f'--lm=a={files["binary"]}'], ['stray'],
          [f'--lm=a={workdir}', '--clients=0'],
          [f'--lm=a={workdir}', '--clients=a,b'],
          [f'--lm=a={workdir}', '--clients='],
          [f'--lm=a={workdir}', f'--plot={files["dir"]}/p.txt'],
          [f'--lm=a={workdir}', '--max_tokens=0'],
          [f'--llama_cpp_python={sys.executable}',
           f'--gguf={files["missing"]}'],
          [f'--llama_cpp_python={sys.executable}', f'--gguf={files["fifo"]}']],
      'tools.config_reference': [
          [f'--out={files["dir"]}'], ['--out='], ['stray'],
          [f'--out={files["binary"]}/configs.md']],
  }
  # Empty paths (the current directory to the operating system), links,
  # over-long names and a pipe, wherever a script reads or writes a path.
  bad_outputs = ['', files['link_output'], files['dangling_output'],
                 files['long_name']]
  cases['experiments.train'] += [
      train_base[:1] + [f'--workdir={path}'] + train_base[2:]
      for path in ('', files['dangling_output'], files['long_name'])]
  cases['experiments.generate'].append(['--workdir=', '--prompt=x'])
  cases['experiments.evaluate'].append(['--workdir='])
  cases['experiments.embed'].append(['--workdir=', '--text=x'])
  cases['experiments.export'] += [
      [f'--workdir={workdir}', f'--output={path}'] for path in bad_outputs
  ] + [['--workdir=', f'--output={files["dir"]}/o']]
  cases['experiments.compress'] += [
      [f'--workdir={workdir}', '--method=int8', f'--output={path}']
      for path in bad_outputs[1:]] + [
          ['--workdir=', '--method=int8', f'--output={files["dir"]}/q']]
  cases['tools.lm_eval_tasks'] += [[f'--output={path}']
                                         for path in bad_outputs]
  cases['experiments.convert'] += [
      [f'--source={files["binary"]}', f'--workdir={path}']
      for path in bad_outputs] + [
          [f'--source={path}', f'--workdir={files["dir"]}/imp']
          for path in ('', files['fifo'], files['long_name'])]
  # Every script of every folder of them; their helpers are no scripts.
  scripts = {f'{folder}.{name[:-3]}'
             for folder in ('experiments', 'benchmarks', 'tools')
             for name in os.listdir(os.path.join(ROOT, folder))
             if name.endswith('.py') and name not in (
                 '__init__.py', 'cli.py', 'measure.py', 'http_load.py')}
  assert set(cases) == scripts, 'every script is fuzzed'
  # Every case again with two junk flags on top: still one clean error.
  rng = random.Random(0)
  for script, argvs in cases.items():
    junk = []
    for argv in rng.sample(argvs, min(8, len(argvs))):
      extra = [f'--no_such_flag_{rng.randrange(99)}={rng.choice(_JUNK_VALUES)}',
               rng.choice(_JUNK_VALUES) or 'stray']
      junk.append(argv + extra)
    argvs.extend(junk)
  return cases


def _files_but_the_lock(workdir):
  return {path: stat for path, stat in snapshot(workdir).items()
          if os.path.basename(path) != '.lock'}


@pytest.fixture
def workdir(float_workdir, tmp_path):
  """A copy of a trained tiny decoder's workdir (GQA, byte tokenizer)."""
  path = str(tmp_path / 'workdir')
  shutil.copytree(float_workdir, path)
  return path


def test_malformed_invocations_get_one_line_errors(data_dir, workdir,
                                                   tmp_path):
  files = _files(tmp_path)
  before = _files_but_the_lock(workdir)
  # The cases run in the repository's root: the current directory, which
  # an empty path would name.
  root_before = sorted(os.listdir(ROOT))
  results = run_cases(_cases(files, workdir, data_dir))
  total = sum(len(runs) for runs in results.values())
  assert total >= 300, total
  bad = []
  for script, runs in results.items():
    for run in runs:
      errors = [l for l in run['stderr'].splitlines()
                if l.startswith('error: ')]
      if (run['crash'] or run['code'] == 0 or 'Traceback' in run['stderr']
          or len(errors) != 1):
        bad.append(f"{script} {run['argv']}: code {run['code']}, "
                   f"stderr {run['stderr'][-500:]!r}, "
                   f"crash {(run['crash'] or '')[-1500:]}")
  assert not bad, f'{len(bad)} of {total} cases:\n' + '\n\n'.join(bad[:15])
  assert sorted(os.listdir(ROOT)) == root_before
  assert not [name for name in os.listdir(os.path.dirname(ROOT))
              if '.partial-' in name]
  # Nothing was written into the workdir (but the lock file a refused
  # training run takes and frees) or the existing output folder.
  assert _files_but_the_lock(workdir) == before
  assert os.listdir(files['existing_output']) == ['keep.txt']
  assert os.listdir(files['link_target']) == []


def test_errors_name_the_problem_and_the_fix(data_dir, workdir, tmp_path):
  files = _files(tmp_path)
  before = _files_but_the_lock(workdir)
  tiny = overrides(tiny_config(data_dir))
  empty = files['dir']
  cases = [  # (script, argv, words the error names)
      ('experiments.train', [*tiny, '--config.train.num_steps=many',
                             f'--workdir={workdir}'], ('num_steps', 'many')),
      ('experiments.train', [*tiny, '--config.train.num_stepz=5',
                             f'--workdir={workdir}'], ('num_stepz',)),
      ('experiments.train', [*tiny, '--config.model.norm=batchnorm',
                             f'--workdir={workdir}'], ('model.norm',)),
      ('experiments.train', ['--config=configs/nope.py', f'--workdir={empty}'],
       ('nope.py',)),
      # FILE:preset loads; the run then stops at the (bad) step count.
      ('experiments.train', ['--config=configs/bert.py:large',
                             '--config.train.num_steps=0',
                             f'--workdir={empty}'],
       ('train.num_steps must be positive',)),
      ('experiments.generate', [f'--workdir={empty}', '--prompt=ROMEO:'],
       (empty,)),
      ('experiments.generate', [f'--workdir={workdir}', '--prompt='],
       ('prompt',)),
      ('experiments.generate', [f'--workdir={workdir}', '--prompt=hi',
                                '--chat'], ('chat template',)),
      ('experiments.embed', [f'--workdir={workdir}', '--text=hello'],
       ('encoder models',)),
      ('experiments.export', [f'--workdir={workdir}', f'--output={empty}/hf'],
       ('num_kv_heads=2',)),
      ('experiments.convert', [f'--source={files["binary"]}',
                               f'--workdir={empty}/imported'],
       ('binary.bin', 'GGUF')),
      ('experiments.evaluate', [f'--workdir={workdir}', '--split=test'],
       ("'test'",)),
      ('experiments.compress', [f'--workdir={workdir}', '--method=int4',
                                f'--output={files["existing_output"]}'],
       ('already exists',)),
      ('benchmarks.benchmark', ['--config=configs/bert.py'],
       ('causal decoders',)),
  ]
  grouped = {}
  for script, argv, _ in cases:
    grouped.setdefault(script, []).append(argv)
  results = {script: iter(runs) for script, runs in run_cases(grouped).items()}
  for script, argv, words in cases:
    run = next(results[script])
    errors = [l for l in run['stderr'].splitlines() if l.startswith('error: ')]
    assert run['code'] == 2 and not run['crash'] and len(errors) == 1, (
        script, argv, run)
    for word in words:
      assert word in errors[0], (script, argv, errors[0])
  # Nothing was written: not into the workdir, the empty folder or the
  # existing output.
  assert _files_but_the_lock(workdir) == before
  assert os.listdir(empty) == []
  assert os.listdir(files['existing_output']) == ['keep.txt']
