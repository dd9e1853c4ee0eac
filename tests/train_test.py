"""Training: the loss falls, and a resumed run equals an uninterrupted one."""

import json
import os
import re

import jax
import numpy as np
import pytest

from lm.errors import UsageError
from lm.evaluate import batch_metrics
from lm.io import checkpoint
from lm.io import config_file
from lm.io import layout
from lm.io.lock import WorkdirLock
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train import loop
from lm.train.trainer import Trainer


def abstract_params(config):
  model = registry.build_model(ModelConfig.from_config(config.model))
  return model_params.abstract_params(model)


def final_params(config, workdir):
  return checkpoint.load_params(workdir, abstract_params(config))


def params_at(config, workdir, step):
  checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
  return checkpointer.restore_params(abstract_params(config), step)


@pytest.mark.slow
def test_loss_falls_on_a_tiny_fixture(tiny, tmp_path):
  tiny.train.profile_steps = 3
  lines = []
  final = loop.train_and_evaluate(tiny, str(tmp_path), log=lines.append)
  uniform = np.log(tiny.model.vocab_size)
  assert final['loss'] < 0.75 * uniform, final
  assert 0 < final['bits_per_byte'] < 8
  assert any(line.startswith('step 20/20 | loss') for line in lines), lines
  assert any('tokens/s' in line and 'ETA' in line for line in lines)
  mfu = [float(re.search(r'MFU ([0-9.]+)%', line).group(1))
         for line in lines if line.startswith('step ')]
  # (The first interval includes compiling, and may round to 0.0%.)
  assert mfu and all(0 <= x < 100 for x in mfu) and mfu[-1] > 0, lines
  # The profiler traced steps 3-5 into the workdir.
  assert 'Profile of steps 3-5 written to' in '\n'.join(lines)
  traces = [name for _, _, names in os.walk(tmp_path / 'profile')
            for name in names if name.endswith('.xplane.pb')]
  assert traces


@pytest.mark.slow
def test_eval_steps_scores_the_first_batches_of_the_split(tiny):
  tiny.train.eval_steps = 2
  trainer = Trainer(tiny)
  params = model_params.init_params(trainer.model, jax.random.key(0))
  evaluator = trainer.evaluator
  batches = list(evaluator.batches())
  assert len(batches) > 2

  def summed(chosen):
    sums = [evaluator.step(params, batch) for batch in chosen]
    return batch_metrics.summarize(jax.tree.map(lambda *x: sum(x), *sums))

  assert trainer.evaluate(params) == summed(batches[:2])
  tiny.train.eval_steps = 0
  assert Trainer(tiny).evaluate(params) == summed(batches)
  tiny.train.eval_steps = -1
  with pytest.raises(UsageError, match='eval_steps must be >= 0'):
    Trainer(tiny)


@pytest.mark.slow
def test_stop_and_resume_equals_an_uninterrupted_run(tiny, tmp_path):
  straight = loop.train_and_evaluate(tiny, str(tmp_path / 'straight'))

  resumed_dir = str(tmp_path / 'resumed')
  loop.train_and_evaluate(tiny, resumed_dir, stop_at_step=10)
  lines = []
  resumed = loop.train_and_evaluate(tiny, resumed_dir, log=lines.append)

  assert any('Resuming from the checkpoint at step 10' in l for l in lines)
  assert resumed == straight
  params_a, step_a = final_params(tiny, str(tmp_path / 'straight'))
  params_b, step_b = final_params(tiny, resumed_dir)
  assert step_a == step_b == 20
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  # The uninterrupted run saved step 10 asynchronously and went on training
  # with donated buffers; what it wrote must still be the step-10 params.
  jax.tree.map(np.testing.assert_array_equal,
               params_at(tiny, str(tmp_path / 'straight'), 10),
               params_at(tiny, resumed_dir, 10))


@pytest.mark.slow
def test_more_steps_continue_a_finished_run(tiny, tmp_path):
  loop.train_and_evaluate(tiny, str(tmp_path), stop_at_step=10)
  tiny.train.num_steps = 12
  lines = []
  loop.train_and_evaluate(tiny, str(tmp_path), log=lines.append)
  assert any('step 12/12' in line for line in lines)
  assert final_params(tiny, str(tmp_path))[1] == 12


@pytest.mark.slow
def test_resuming_with_another_model_is_refused(tiny, tmp_path):
  loop.train_and_evaluate(tiny, str(tmp_path), stop_at_step=10)
  tiny.model.d_model = 48
  with pytest.raises(UsageError, match='model.d_model=32'):
    loop.train_and_evaluate(tiny, str(tmp_path))


def test_a_trainer_of_another_config_is_refused(tiny, tmp_path):
  """train_and_evaluate reuses a Trainer only of the config it trains."""
  trainer = Trainer(tiny)
  other = tiny.copy_and_resolve_references()
  with pytest.raises(UsageError, match='the Trainer built from that config'):
    loop.train_and_evaluate(other, str(tmp_path / 'run'), trainer=trainer)
  assert not os.path.exists(tmp_path / 'run')  # Refused before writing.


def test_tokenizer_larger_than_model_vocab_is_refused(tiny, tmp_path):
  tiny.model.vocab_size = 100
  with pytest.raises(UsageError, match='vocab_size'):
    loop.train_and_evaluate(tiny, str(tmp_path))


def _first_and_last_eval(config, workdir):
  evals = []
  loop.train_and_evaluate(config, workdir, log=lambda line: evals.append(
      line) if line.startswith('eval at step') else None)
  loss = lambda line: float(line.split('val_loss=')[1].split()[0])
  return loss(evals[0]), loss(evals[-1])


@pytest.mark.slow
def test_masked_lm_pretraining_lowers_validation_loss(tiny, tmp_path):
  tiny.model.update(family='encoder', norm_position='post', embed_norm=True,
                    num_kv_heads=0, vocab_size=261)  # + [MASK]
  tiny.data.objective = 'masked'
  tiny.train.update(num_steps=30, eval_every=10)
  first, last = _first_and_last_eval(tiny, str(tmp_path))
  assert last < first < np.log(tiny.model.vocab_size), (first, last)
  assert last < 0.7 * np.log(tiny.model.vocab_size), (first, last)


@pytest.mark.slow
def test_span_corruption_pretraining_lowers_validation_loss(tiny, tmp_path):
  tiny.model.update(family='encoder_decoder', norm='rmsnorm',
                    position='relative', use_bias=False, scale_queries=False,
                    num_kv_heads=0, vocab_size=264)  # + 3 sentinels
  tiny.data.objective = 'span'
  tiny.train.update(num_steps=30, eval_every=10)
  first, last = _first_and_last_eval(tiny, str(tmp_path))
  assert last < first < np.log(tiny.model.vocab_size), (first, last)
  assert last < 0.7 * np.log(tiny.model.vocab_size), (first, last)


@pytest.mark.parametrize('family, objective, match', [
    ('encoder', 'causal', "trains decoder models"),
    ('decoder', 'span', "trains encoder_decoder models"),
])
def test_an_objective_the_family_cannot_train_is_refused(
    tiny, tmp_path, family, objective, match):
  tiny.model.update(family=family, num_kv_heads=0)
  tiny.data.objective = objective
  with pytest.raises(UsageError, match=match):
    loop.train_and_evaluate(tiny, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_no_room_for_the_mask_token_is_refused(tiny, tmp_path):
  tiny.model.update(family='encoder', num_kv_heads=0)  # vocab 260: full
  tiny.data.objective = 'masked'
  with pytest.raises(UsageError, match='at least 261'):
    loop.train_and_evaluate(tiny, str(tmp_path))


def test_config_of_an_older_workdir_gets_the_keys_added_since(tmp_path):
  from configs import base  # pylint: disable=g-import-not-at-top
  old = base.get_base_config().to_dict()
  del old['privacy']
  del old['data']['augment']
  old['model']['d_model'] = 64
  with open(tmp_path / layout.CONFIG, 'w') as f:
    json.dump(old, f)
  assert 'privacy' not in config_file.load_config(str(tmp_path))
  config = config_file.load_config(str(tmp_path), base.get_base_config())
  assert config.privacy.dp_sgd is False
  assert config.data.augment.synonym == 0.0
  assert config.model.d_model == 64  # what was saved wins


def test_sequences_longer_than_the_position_table_are_refused(tiny):
  tiny.data.seq_len = 65  # tiny's learned positions stop at 64
  with pytest.raises(UsageError, match='exceed model.max_len=64'):
    Trainer(tiny)


def test_a_second_run_on_a_workdir_in_use_is_refused(tiny, tmp_path):
  workdir = str(tmp_path)
  with WorkdirLock(workdir):  # Another run holds it (a lock is per open file).
    with pytest.raises(UsageError, match=r'in use by another run \(pid '):
      loop.train_and_evaluate(tiny, workdir)
  assert not os.path.exists(os.path.join(workdir, layout.CONFIG))
  # A run that fails while holding it frees it too (the operating system
  # frees it when a process dies).
  other = tiny.copy_and_resolve_references()
  other.model.d_model = 64
  config_file.save_config(other, workdir)
  with pytest.raises(UsageError, match='was trained with model.d_model=64'):
    loop.train_and_evaluate(tiny, workdir)
  with WorkdirLock(workdir):
    pass
