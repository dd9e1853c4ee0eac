"""The scripts end to end, as a user runs them (their mistakes: fuzz_test)."""

import json
import os
import platform
import types

import jax
import numpy as np
import pytest

from configs import base
from lm.evaluate import evaluator
from lm.evaluate import score
from lm.kernels import allocator
from lm.perf import timing
from tests.cli_helpers import overrides, run
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('workdir'))
  config = tiny_config(data_dir)
  config.sample.at_eval = True  # Samples at the evaluation of step 20.
  result = run('experiments.train', *overrides(config), f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  return workdir, result.stdout


def test_train_prints_progress_samples_and_final_bits_per_byte(trained):
  workdir, stdout = trained
  assert 'Starting a new run' in stdout
  assert 'step 20/20 | loss' in stdout
  assert stdout.count('--- sample at step 20 ---\n') == 2
  last = stdout.strip().splitlines()[-1]
  assert last.startswith('final:') and 'val_bits_per_byte=' in last
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


def test_train_again_resumes_instead_of_starting_over(trained, data_dir):
  workdir, _ = trained
  result = run('experiments.train', *overrides(tiny_config(data_dir)),
               f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert 'Resuming from the checkpoint at step 20' in result.stdout
  assert 'step 1/' not in result.stdout


def test_generate_continues_a_prompt(trained):
  workdir, _ = trained
  result = run('experiments.generate', f'--workdir={workdir}',
               '--prompt=ROMEO:', '--max_new_tokens=10')
  assert result.returncode == 0, result.stderr
  assert 'ROMEO:' in result.stdout
  assert len(result.stdout.split('ROMEO:', 1)[1]) > 0


def test_evaluate_writes_json_and_prints_a_table(trained, monkeypatch):
  workdir, _ = trained
  result = run('experiments.evaluate', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert '| shakespeare | validation | 20 |' in result.stdout
  path = os.path.join(workdir, 'eval', 'shakespeare_validation.json')
  with open(path) as f:
    saved = json.load(f)
  assert saved['step'] == 20 and 0 < saved['metrics']['bits_per_byte'] < 8
  # --max_batches bounds the work of any task, a live line counts it, and
  # --eval_batch_size sets the rows of each batch.
  shown, rows = [], []
  line = types.SimpleNamespace(show=shown.append, close=lambda: None)
  step = evaluator.Evaluator.step

  def counting_rows(self, params, batch):
    rows.append(jax.tree.leaves(batch)[0].shape[0])
    return step(self, params, batch)

  monkeypatch.setattr(evaluator.Evaluator, 'step', counting_rows)
  score.evaluate_workdir(workdir, 'validation', {'max_batches': 1},
                         base.get_base_config(), line=line, eval_batch_size=3)
  assert shown == ['scoring: batch 1'] and rows == [3]


def test_ngram_baseline_prints_bits_per_byte_as_json(data_dir):
  result = run('experiments.ngram_baseline', *overrides(tiny_config(data_dir)),
               '--order=2')
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['baseline'] == 'kneser_ney_2gram'
  assert 0 < report['bits_per_byte'] < 8  # below uniform over 256 bytes


def test_train_then_evaluate_a_qa_task_in_one_command(data_dir, tmp_path):
  result = run(
      'experiments.train', '--config=configs/qa.py:scratch',
      f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}',
      '--config.data.tokenizer=byte', '--config.model.vocab_size=260',
      '--config.model.d_model=32', '--config.model.num_layers=1',
      '--config.model.d_ff=64', '--config.model.max_len=64',
      '--config.data.seq_len=64', '--config.data.target_len=16',
      '--config.train.num_steps=3', '--config.optim.warmup_steps=1',
      '--config.evaluate.max_examples=4', '--evaluate=test')
  assert result.returncode == 0, result.stderr
  assert '--- sample' not in result.stdout  # not a free-text LM
  header = [l for l in result.stdout.splitlines() if l.startswith('| dataset')]
  assert header and 'exact_match' in header[0] and 'token_f1' in header[0]
  with open(tmp_path / 'eval' / 'country_qa_test.json', encoding='utf-8') as f:
    saved = json.load(f)
  assert saved['generation'] == {'examples': 4, 'decoding': 'greedy'}
  assert 0 <= saved['metrics']['token_f1'] <= 100


def test_decode_speed_compares_compiled_and_op_by_op_decoding():
  result = run('benchmarks.decode_speed', '--config=configs/default.py',
               '--config.model.num_layers=1', '--prompt_len=4',
               '--max_new_tokens=3')
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['same_tokens'] and report['new_tokens'] == 3
  assert report['no_jit_s'] > 0 and report['jit_s'] > 0


def test_compress_writes_a_quantized_workdir_and_reports_it(trained,
                                                            tmp_path):
  workdir, _ = trained
  output = str(tmp_path / 'int8')
  result = run('experiments.compress', f'--workdir={workdir}',
               '--method=int8', f'--output={output}')
  assert result.returncode == 0, result.stderr
  assert "model.quant='int8'" in result.stdout
  plot = tmp_path / 'report.png'
  result = run('experiments.compress', f'--report={workdir},{output}',
               '--names=fp32,int8', '--decode_tokens=4', f'--plot={plot}')
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in result.stdout.splitlines()
          if line.startswith('{')]
  assert [row['name'] for row in rows] == ['fp32', 'int8']
  # Orbax's metadata is much of the files of a model this small, and one
  # float scale per 32 weights adds 1/8; biases and norms stay float.
  assert rows[1]['array_bytes'] < 0.4 * rows[0]['array_bytes'], rows
  assert rows[1]['params_bytes'] < rows[0]['params_bytes'], rows
  assert rows[0]['weights'] == rows[1]['weights']
  assert all(row['decode_tokens_per_s'] > 0 for row in rows)
  assert '| int8 |' in result.stdout
  assert plot.stat().st_size > 10_000


_TINY_BENCH = ['--config=configs/bench/gpt_cpu.py', '--config.model.num_layers=1',
               '--config.model.d_model=32', '--config.model.num_heads=2',
               '--config.model.d_ff=64', '--config.model.vocab_size=64',
               '--config.model.max_len=32', '--config.data.seq_len=16',
               '--config.data.batch_size=2', '--config.bench.steps=2',
               '--config.bench.warmup_steps=1', '--config.bench.prompt_len=4',
               '--config.bench.new_tokens=3', '--config.bench.decode_batch=2']


def test_benchmark_prints_speed_flops_and_mfu():
  # The GPU machine the benchmark is made for has no data stack.
  # LM_ALLOCATOR unset (the suite sets 'system'): the allocator restart runs.
  result = run('benchmarks.benchmark', *_TINY_BENCH,
               hidden=('grain', 'tensorflow_datasets', 'tensorflow'),
               env={'LM_ALLOCATOR': ''})
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['train_steps_timed'] == 2
  # One layer of width 32, 2 heads, MLP 64, tied 64-token vocabulary.
  n = 4 * 32 * 32 + 2 * 32 * 64 + 64 * 32
  assert report['flops_per_token'] == 6 * n + 12 * 1 * 2 * 16 * 16
  for key in ('train_tokens_per_s', 'achieved_gflops', 'peak_gflops_measured',
              'mfu_measured', 'train_peak_mib', 'prefill_tokens_per_s',
              'decode_tokens_per_s'):
    assert report[key] > 0, key
  assert report['mfu_measured'] <= 1
  # The script restarted itself with mimalloc (setup.cfg installs it).
  added = allocator.settings_to_add(dict(os.environ, LM_ALLOCATOR=''),
                                    allocator.mimalloc_library(),
                                    platform.libc_ver(), allocator.thp_mode())
  if 'LD_PRELOAD' in added:
    assert report['allocator'] == 'mimalloc'
    assert report['mimalloc_purge_delay'] == '-1'
  assert report['glibc_tunables'] == added.get(
      'GLIBC_TUNABLES', os.environ.get('GLIBC_TUNABLES', ''))


def test_benchmark_sweep_writes_json_lines_and_a_plot(tmp_path):
  out, plot = tmp_path / 'sweep.jsonl', tmp_path / 'sweep.png'
  result = run('benchmarks.benchmark', *_TINY_BENCH, '--sweep',
               '--seq_lens=32', '--layer_counts=2', '--sweep_steps=1',
               f'--sweep_out={out}', f'--plot={plot}')
  assert result.returncode == 0, result.stderr
  points = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(p['sweep'], p['attention'], p['seq_len'], p['batch_size'],
           p['num_layers']) for p in points] == [
               ('seq_len', 'auto', 32, 1, 1), ('seq_len', 'blockwise', 32, 1, 1),
               ('num_layers', 'auto', 16, 2, 2)]
  assert all(p['train_tokens_per_s'] > 0 for p in points)
  assert plot.stat().st_size > 10_000


def test_torch_peer_trains_and_decodes_the_same_model():
  result = run('benchmarks.torch_peer', *_TINY_BENCH)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('train_tokens_per_s', 'decode_tokens_per_s',
              'hf_generate_tokens_per_s'):
    assert report[key] > 0, key


def test_torch_peer_alternates_lm_and_pytorch_decoding():
  result = run('benchmarks.torch_peer', *_TINY_BENCH, '--only=alternate',
               '--config.bench.decode_repeats=3')
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['alternate_rounds'] == 3
  assert 'train_tokens_per_s' not in report
  assert report['lm_decode_tokens_per_s'] > 0
  assert report['decode_tokens_per_s'] > 0
  # The speeds are printed rounded, so their ratio is only as exact as the
  # slower one's last digit (a loaded CPU once made it 238).
  assert report['lm_over_torch_decode'] == pytest.approx(
      report['lm_decode_tokens_per_s'] / report['decode_tokens_per_s'],
      rel=0.01, abs=0.01)


def test_alternating_seconds_times_each_call_in_turn():
  calls = []
  times = timing.alternating_seconds(
      {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')},
      rounds=3, warmup=1)
  assert calls == ['a', 'b'] * 4
  assert {name: len(t) for name, t in times.items()} == {'a': 3, 'b': 3}
  assert all(t >= 0 for t in times['a'] + times['b'])


@pytest.mark.parametrize('how, m, n', [('dense', 8, 24), ('dense', 24, 8),
                                       ('tied', 40, 8)])
def test_kernel_peers_weight_gradients_are_x_transposed_times_dy(how, m, n):
  from benchmarks import kernel_peers
  rng = np.random.default_rng(0)
  x_KM, d_y_KN = (rng.standard_normal((16, d), np.float32) for d in (m, n))
  got = jax.jit(kernel_peers._lm_weight_gradient(how))(x_KM, d_y_KN)
  np.testing.assert_allclose(got, x_KM.T @ d_y_KN, rtol=1e-5, atol=1e-5)


def test_kernel_peers_times_each_product_of_the_train_step():
  result = run('benchmarks.kernel_peers', *_TINY_BENCH[:-4],
               '--config.model.num_kv_heads=1', '--repeats=1')
  assert result.returncode == 0, result.stderr
  *rows, summary = [json.loads(line)
                    for line in result.stdout.strip().splitlines()]
  kernels = {row['kernel']: row for row in rows}
  # 1 layer, width 32, 2 query heads of 16 and 1 key/value head, MLP 64,
  # 2 x 16 tokens, tied 64-token vocabulary.
  assert (kernels['attention_key_value/forward']['n'],
          kernels['attention_key_value/forward']['count']) == (16, 2)
  assert [kernels[f'mlp_in/{p}'][d] for p, d in (
      ('forward', 'k'), ('input_gradient', 'k'), ('weight_gradient', 'k'))
         ] == [32, 64, 32]
  assert kernels['output_layer/forward']['layout'] == 'nt'
  assert kernels['mlp_out/weight_gradient']['lm'] == 'dense'
  assert kernels['output_layer/weight_gradient']['lm'] == 'tied'
  attention = kernels['causal_attention/forward_and_backward']
  assert (attention['shape'], attention['kv_heads']) == ([2, 16, 2, 16], 1)
  assert len(rows) == 5 * 3 + 3 + 1
  assert all(row['lm_gflops'] > 0 and row['torch_gflops'] > 0 for row in rows)
  step = sum(row['lm_s'] * row['count'] for row in rows[:-1])
  assert abs(summary['matmul_s_per_step']['lm'] - step) < 1e-3
