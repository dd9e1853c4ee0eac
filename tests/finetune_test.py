"""Classification fine-tuning, from scratch and from another workdir."""

import chex
import flax.traverse_util
import jax
import numpy as np
import pytest

from lm import restore
from lm.errors import UsageError
from lm.evaluate import score
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


def test_init_from_another_architecture_is_refused(tiny, tmp_path):
  tiny.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  loop.train_and_evaluate(tiny, str(tmp_path / 'lm'))  # d_model 32
  config = classifier_config(tiny, pooling='last', d_model=48)
  config.init_from = str(tmp_path / 'lm')
  with pytest.raises(UsageError, match='model.d_model=32'):
    loop.train_and_evaluate(config, str(tmp_path / 'cls'))


def test_wrong_number_of_classes_is_refused(tiny, tmp_path):
  config = classifier_config(tiny, pooling='last')
  config.model.num_classes = 2
  with pytest.raises(UsageError, match='has 3 classes'):
    loop.train_and_evaluate(config, str(tmp_path))


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


def test_dp_sgd_without_noise_or_clipping_is_plain_sgd(tiny):
  """Per-example gradients, averaged, equal the batch gradient (one label
  per example); noise then makes the step differ."""
  # One layer: per-example gradients take the longest of any step to compile.
  config = classifier_config(tiny, **ENCODER, num_layers=1)
  # A first step with a learning rate (no warmup), and an Adam epsilon large
  # enough that rounding in near-zero gradients does not flip updates.
  config.optim.update(warmup_steps=0, eps=1e-3)
  steps = {}
  for name, dp_sgd, noise in [('plain', False, 0.0), ('dp0', True, 0.0),
                              ('dp1', True, 1.0)]:
    config.privacy.update(dp_sgd=dp_sgd, noise_multiplier=noise,
                          l2_clip=1e6)
    trainer = Trainer(config)
    batch = next(iter(trainer.data.train.to_iter_dataset()))
    state, step_metrics = trainer.train_step(trainer.init_state(), batch)
    steps[name] = (jax.device_get(state.params), step_metrics)
  chex.assert_trees_all_close(steps['dp0'][0], steps['plain'][0], atol=1e-6)
  np.testing.assert_allclose(steps['dp0'][1]['loss'],
                             steps['plain'][1]['loss'], rtol=1e-6)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(steps['dp1'][0], steps['plain'][0], atol=1e-6)


def test_dp_sgd_run_reports_epsilon(tiny, tmp_path):
  config = classifier_config(tiny, **ENCODER)
  config.train.update(num_steps=6, eval_every=6, checkpoint_every=6)
  config.privacy.update(dp_sgd=True, noise_multiplier=1.1, l2_clip=1.0)
  lines = []
  loop.train_and_evaluate(config, str(tmp_path), log=lines.append)
  assert any(line.startswith('DP-SGD at step 6: epsilon=') for line in lines)
  result = score.evaluate_workdir(str(tmp_path), 'validation', {})
  spent = result['privacy']
  assert spent['steps'] == 6 and 0 < spent['epsilon'] < 100
  trainer = Trainer(config)
  assert spent['delta'] == 1 / trainer.data.train_examples
  # More steps, or less noise, spend more.
  assert trainer.privacy_spent(60)['epsilon'] > spent['epsilon']
  config.privacy.noise_multiplier = 0.8
  assert Trainer(config).privacy_spent(6)['epsilon'] > spent['epsilon']
  assert 'DP-SGD: epsilon' in score.markdown_table(result)


def test_bad_privacy_settings_are_refused(tiny):
  tiny.privacy.update(dp_sgd=True, l2_clip=0.0)
  with pytest.raises(UsageError, match='privacy.l2_clip must be > 0'):
    Trainer(tiny)


def test_init_from_a_family_that_cannot_serve_the_task(tiny, tmp_path):
  decoder = tiny.copy_and_resolve_references()
  decoder.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  loop.train_and_evaluate(decoder, str(tmp_path / 'gpt'))
  config = classifier_config(tiny, **ENCODER)
  config.init_from = str(tmp_path / 'gpt')
  with pytest.raises(UsageError, match='holds a decoder model, which cannot '
                     'serve this task'):
    Trainer(config).init_from(config.init_from)
