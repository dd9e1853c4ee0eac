"""Classification fine-tuning, from scratch and from another workdir."""

import flax.traverse_util
import jax
import numpy as np
import pytest

from lm import checkpoint
from lm import train
from lm.errors import UsageError

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
  final = train.train_and_evaluate(config, str(tmp_path), log=lines.append)
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
  train.train_and_evaluate(pretrain, str(tmp_path / 'mlm'))

  config = classifier_config(tiny, vocab_size=261, **ENCODER)
  config.init_from = str(tmp_path / 'mlm')
  config.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  trainer = train.Trainer(config)
  state, message = trainer.init_from(config.init_from)
  assert 'new: classifier/bias, classifier/kernel' in message
  source = flax.traverse_util.flatten_dict(
      checkpoint.restore(str(tmp_path / 'mlm')).params, sep='/')
  started = flax.traverse_util.flatten_dict(state.params, sep='/')
  for name, value in source.items():
    np.testing.assert_array_equal(np.asarray(started[name]),
                                  np.asarray(value), err_msg=name)
  lines = []
  train.train_and_evaluate(config, str(tmp_path / 'cls'), log=lines.append)
  assert any(line.startswith('Initialized from') for line in lines)


def test_init_from_another_architecture_is_refused(tiny, tmp_path):
  tiny.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  train.train_and_evaluate(tiny, str(tmp_path / 'lm'))  # d_model 32
  config = classifier_config(tiny, pooling='last', d_model=48)
  config.init_from = str(tmp_path / 'lm')
  with pytest.raises(UsageError, match='model.d_model=32'):
    train.train_and_evaluate(config, str(tmp_path / 'cls'))


def test_wrong_number_of_classes_is_refused(tiny, tmp_path):
  config = classifier_config(tiny, pooling='last')
  config.model.num_classes = 2
  with pytest.raises(UsageError, match='has 3 classes'):
    train.train_and_evaluate(config, str(tmp_path))


def test_padding_does_not_change_the_class_logits(tiny):
  """The pooled vector ignores pad tokens, for every pooling."""
  from lm import models  # pylint: disable=g-import-not-at-top
  for model_kw in (dict(ENCODER, pooling='mean'), dict(pooling='last'),
                   dict(ENCODER, pooling='first')):
    config = models.ModelConfig(**{**dict(tiny.model), **model_kw,
                                   'num_classes': 3})
    model = models.build_model(config)
    params = models.init_params(model, jax.random.PRNGKey(0))
    tokens = np.array([[5, 6, 7, 8]])
    short = model.apply({'params': params}, tokens,
                        padding_mask_BL=np.ones((1, 4), bool))
    padded = model.apply({'params': params},
                         np.array([[5, 6, 7, 8, 0, 0]]),
                         padding_mask_BL=np.array([[1, 1, 1, 1, 0, 0]], bool))
    np.testing.assert_allclose(short, padded, atol=1e-5, err_msg=str(model_kw))
