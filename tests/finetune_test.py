"""Classification fine-tuning, from scratch and from another workdir."""

import json
import os

import chex
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import restore
from lm.data import datasets
from lm.errors import UsageError
from lm.evaluate import batch_metrics
from lm.evaluate import score
from lm.model import params as model_params
from lm.train import loop
from lm.train.trainer import Trainer

ENCODER = dict(family='encoder', norm_position='post', embed_norm=True,
               num_kv_heads=0)


def classifier_config(config, **model):
  config.model.update(num_classes=3, **model)
  config.data.update(name='tweet_sentiment', objective='classify', seq_len=48,
                     batch_size=16, eval_batch_size=256)
  config.train.update(num_steps=30, eval_every=30, checkpoint_every=30)
  return config


@pytest.mark.slow
@pytest.mark.parametrize('model', [dict(ENCODER, pooling='first'),
                                   dict(pooling='last')])
def test_classifier_trains_and_reports_f1(tiny, tmp_path, model):
  config = classifier_config(tiny, **model)
  lines = []
  final = loop.train_and_evaluate(config, str(tmp_path), log=lines.append)
  assert set(final) == {'loss', 'accuracy', 'macro_f1', 'macro_precision',
                        'macro_recall'}
  assert final['loss'] < np.log(3)  # better than a uniform guess
  assert 0 < final['macro_f1'] < 1
  assert any('val_macro_f1=' in line for line in lines)


@pytest.mark.slow
def test_init_from_copies_the_backbone_and_adds_a_head(tiny, tmp_path):
  pretrain = tiny.copy_and_resolve_references()
  pretrain.model.update(vocab_size=261, **ENCODER)
  pretrain.data.objective = 'masked'
  pretrain.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  loop.train_and_evaluate(pretrain, str(tmp_path / 'mlm'))

  config = classifier_config(tiny, vocab_size=261, **ENCODER)
  config.init_from = str(tmp_path / 'mlm')
  config.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  trainer = Trainer(config)
  state, message = trainer.init_from(config.init_from)
  assert 'new: classifier/bias, classifier/kernel' in message
  source = flax.traverse_util.flatten_dict(
      restore.workdir(str(tmp_path / 'mlm')).params, sep='/')
  started = flax.traverse_util.flatten_dict(state.params, sep='/')
  for name, value in source.items():
    np.testing.assert_array_equal(np.asarray(started[name]),
                                  np.asarray(value), err_msg=name)
  lines = []
  loop.train_and_evaluate(config, str(tmp_path / 'cls'), log=lines.append)
  assert any(line.startswith('Initialized from') for line in lines)


@pytest.mark.slow
def test_init_from_another_architecture_is_refused(tiny, tmp_path,
                                                   float_workdir):
  config = classifier_config(tiny, pooling='last', d_model=48)
  config.init_from = float_workdir  # A decoder of d_model 64.
  with pytest.raises(UsageError, match='model.d_model=64'):
    loop.train_and_evaluate(config, str(tmp_path / 'cls'))


def test_wrong_number_of_classes_is_refused(tiny, tmp_path):
  config = classifier_config(tiny, pooling='last')
  config.model.num_classes = 2
  with pytest.raises(UsageError, match='has 3 classes'):
    loop.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_padding_does_not_change_the_class_logits(tiny):
  """The pooled vector ignores pad tokens, for every pooling."""
  from lm.model import params as model_params  # pylint: disable=g-import-not-at-top
  from lm.model import registry  # pylint: disable=g-import-not-at-top
  from lm.model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  for model_kw in (dict(ENCODER, pooling='mean'), dict(pooling='last'),
                   dict(ENCODER, pooling='first')):
    config = ModelConfig(**{**dict(tiny.model), **model_kw,
                                   'num_classes': 3})
    model = registry.build_model(config)
    params = model_params.init_params(model, jax.random.PRNGKey(0))
    tokens = np.array([[5, 6, 7, 8]])
    short = model.apply({'params': params}, tokens,
                        padding_mask_BL=np.ones((1, 4), bool))
    padded = model.apply({'params': params},
                         np.array([[5, 6, 7, 8, 0, 0]]),
                         padding_mask_BL=np.array([[1, 1, 1, 1, 0, 0]], bool))
    np.testing.assert_allclose(short, padded, atol=1e-5, err_msg=str(model_kw))


def _dp_config(tiny, **privacy):
  """A one-layer classifier (per-example gradients take the longest of any
  step to compile) under SGD at rate 1 from the first step, with no other
  clipping or decay: a step moves the parameters by minus the gradient the
  optimizer got. The word embeddings are frozen."""
  config = classifier_config(tiny, **ENCODER, num_layers=1, dropout_rate=0.0)
  config.optim.update(name='sgd', momentum=0.0, learning_rate=1.0,
                      warmup_steps=0, weight_decay=0.0, clip_norm=0.0,
                      freeze=('embed/embedding',))
  config.privacy.update(dp_sgd=True, **privacy)
  return config


@pytest.mark.slow
def test_dp_sgd_step_is_the_mean_of_clipped_per_example_gradients(tiny):
  """Without noise, the step is minus the mean over the batch of each
  example's gradient (of the trainable parameters) clipped to l2_clip:
  checked against a loop over the examples, for per-example gradients of
  the whole batch at once and of two examples at a time. Noise then
  changes the step; the frozen embeddings never move."""
  config = _dp_config(tiny, l2_clip=0.05, noise_multiplier=0.0)
  trainer = Trainer(config)
  batch = next(iter(trainer.data.train.to_iter_dataset()))
  start = jax.device_get(trainer.init_state())
  frozen = lambda name: name == 'embed/embedding'

  def example_loss(params, example):
    sums = batch_metrics.batch_sums(trainer.model, params, example)
    return sums['nll'] / jnp.maximum(jnp.sum(example['weights']), 1.0)

  expected = jax.tree.map(np.zeros_like, start.params)
  example_grad = jax.jit(jax.grad(example_loss))  # one compile for all
  for i in range(len(batch['weights'])):
    example = jax.tree.map(lambda x: x[i:i + 1], batch)
    grads = example_grad(start.params, example)
    grads = jax.tree_util.tree_map_with_path(
        lambda path, g: 0 * g if frozen(model_params.param_name(path)) else g,
        grads)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    assert norm > config.privacy.l2_clip  # so clipping is exercised
    scale = config.privacy.l2_clip / norm / len(batch['weights'])
    expected = jax.tree.map(lambda e, g: e - scale * g, expected, grads)

  moves = {}
  for name, microbatch, noise in [('whole', 0, 0.0), ('chunks', 2, 0.0),
                                  ('noisy', 2, 1.0)]:
    config.privacy.update(microbatch=microbatch, noise_multiplier=noise)
    trainer = Trainer(config)
    state, _ = trainer.train_step(trainer.init_state(), batch)
    moves[name] = jax.tree.map(np.subtract, jax.device_get(state.params),
                               start.params)
  chex.assert_trees_all_close(moves['whole'], expected, atol=2e-6)
  chex.assert_trees_all_close(moves['chunks'], expected, atol=2e-6)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(moves['noisy'], expected, atol=2e-6)
  for path, move in jax.tree_util.tree_flatten_with_path(moves['noisy'])[0]:
    if frozen(model_params.param_name(path)):
      assert not np.any(move)


@pytest.mark.slow
def test_dp_sgd_per_example_memory_grows_with_the_microbatch(tiny):
  """The compiled step's scratch memory holds `microbatch` per-example
  gradients, not the batch's."""
  scratch = {}
  for microbatch in (0, 2):  # (0: the whole batch; the test above's steps.)
    trainer = Trainer(_dp_config(tiny, l2_clip=0.05, noise_multiplier=0.0,
                                 microbatch=microbatch))
    batch = next(iter(trainer.data.train.to_iter_dataset()))
    compiled = trainer.compile_train_step(trainer.init_state(), batch)
    scratch[microbatch] = compiled.memory_analysis().temp_size_in_bytes
  params = sum(x.size * 4 for x in jax.tree.leaves(trainer.init_state().params))
  # Fourteen fewer per-example copies of (mostly) the parameters.
  assert scratch[0] - scratch[2] > 7 * params, (scratch, params)


def test_bad_microbatch_is_refused(tiny):
  with pytest.raises(UsageError, match='privacy.microbatch=3 must divide '
                     'data.batch_size=16'):
    Trainer(_dp_config(tiny, microbatch=3))


@pytest.mark.slow
def test_dp_sgd_run_reports_epsilon(tiny, tmp_path, monkeypatch):
  # The 'noisy' step of the first test above, for six steps.
  config = _dp_config(tiny, l2_clip=0.05, noise_multiplier=1.0, microbatch=2)
  config.train.update(num_steps=6, eval_every=6, checkpoint_every=6)
  lines = []
  loop.train_and_evaluate(config, str(tmp_path), log=lines.append)
  assert any(line.startswith('DP-SGD at step 6: epsilon=') for line in lines)
  # Scored from the evaluation split alone: the sampling rate's count of
  # train examples is the one training recorded.
  read = []
  documents = datasets.documents
  monkeypatch.setattr(datasets, 'documents', lambda builder, split: (
      read.append(split), documents(builder, split))[1])
  result = score.evaluate_workdir(str(tmp_path), 'validation', {})
  monkeypatch.undo()
  assert read and 'train' not in read
  spent = result['privacy']
  assert spent['steps'] == 6 and 0 < spent['epsilon'] < 100
  trainer = Trainer(config)
  assert spent['delta'] == 1 / trainer.data.train_examples
  with open(tmp_path / 'train_data.json') as f:
    assert json.load(f)['train_examples'] == trainer.data.train_examples
  # More steps, or less noise, spend more.
  # The same figure from dp-accounting's own RDP accountant for the run's
  # settings, and no lower than its tighter PLD accountant's.
  event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(
      config.data.batch_size / trainer.data.train_examples,
      dp_event.GaussianDpEvent(1.0)), 6)
  rdp = rdp_privacy_accountant.RdpAccountant().compose(event)
  assert spent['epsilon'] == pytest.approx(rdp.get_epsilon(spent['delta']),
                                           rel=1e-9)
  pld = pld_privacy_accountant.PLDAccountant().compose(event)
  assert pld.get_epsilon(spent['delta']) <= spent['epsilon']
  assert trainer.privacy_spent(60)['epsilon'] > spent['epsilon']
  config.privacy.noise_multiplier = 0.8
  assert Trainer(config).privacy_spent(6)['epsilon'] > spent['epsilon']
  assert 'DP-SGD: epsilon' in score.markdown_table(result)
  # A workdir written before the count was recorded: epsilon is unknown,
  # and the result says why.
  os.remove(tmp_path / 'train_data.json')
  result = score.evaluate_workdir(str(tmp_path), 'validation', {})
  assert 'train_data.json' in result['privacy']['unknown']
  assert 'DP-SGD: epsilon unknown' in score.markdown_table(result)


def test_bad_privacy_settings_are_refused(tiny):
  tiny.privacy.update(dp_sgd=True, l2_clip=0.0)
  with pytest.raises(UsageError, match='privacy.l2_clip must be > 0'):
    Trainer(tiny)


@pytest.mark.slow
def test_init_from_a_family_that_cannot_serve_the_task(tiny, float_workdir):
  config = classifier_config(tiny, **ENCODER)
  config.init_from = float_workdir
  with pytest.raises(UsageError, match='holds a decoder model, which cannot '
                     'serve this task'):
    Trainer(config).init_from(config.init_from)
