"""Per-parameter optimizer settings by name: freezing, learning-rate scales,
layer-wise decay."""

import jax
import numpy as np
import optax
import pytest

from lm.errors import UsageError
from lm.model import params as model_params
from lm.train import optim
from lm.train.trainer import Trainer


def _steps(config, count=2):
  trainer = Trainer(config)
  start = trainer.init_state()
  initial = jax.device_get(start.params)
  state, batches = start, iter(trainer.data.train.to_iter_dataset())
  for _ in range(count):
    state, _ = trainer.train_step(state, next(batches))
  return initial, jax.device_get(state.params), state


def _by_name(params):
  return {model_params.param_name(path): x for path, x in
          jax.tree_util.tree_flatten_with_path(params)[0]}


def test_frozen_parameters_stay_exactly_and_keep_no_optimizer_state(tiny):
  tiny.optim.update(warmup_steps=0,
                    freeze=('embed/embedding', r'block_0/.*'))
  initial, trained, state = _steps(tiny)
  before, after = _by_name(initial), _by_name(trained)
  for name in before:
    frozen = name == 'embed/embedding' or name.startswith('block_0/')
    assert np.array_equal(before[name], after[name]) == frozen, name
  # Adam's two moments exist for the trainable parameters only.
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state)
                if x.ndim >= 1)
  trainable = sum(v.size for k, v in before.items()
                  if not (k == 'embed/embedding' or k.startswith('block_0/')))
  assert moments == 2 * trainable


def test_a_learning_rate_scale_scales_the_update(tiny):
  tiny.optim.warmup_steps = 0
  initial, plain, _ = _steps(tiny, 1)
  tiny.optim.lr_scale = ((r'block_1/.*', 0.5),)
  _, scaled, _ = _steps(tiny, 1)
  before, plain, scaled = map(_by_name, (initial, plain, scaled))
  for name in before:
    if name.startswith('block_1/') and name.endswith('kernel'):
      np.testing.assert_allclose(scaled[name] - before[name],
                                 0.5 * (plain[name] - before[name]),
                                 rtol=1e-4, atol=1e-8)
    elif name.endswith('kernel'):
      np.testing.assert_array_equal(scaled[name], plain[name])


def test_layer_decay_slows_lower_layers_geometrically():
  factor = lambda name: optim._lr_factor(name, (), 0.5, 4)  # pylint: disable=protected-access
  assert factor('embed/embedding') == 0.5 ** 5
  assert factor('position_embed/embedding') == 0.5 ** 5
  assert factor('block_0/mlp/wi/kernel') == 0.5 ** 4
  assert factor('block_3/attention/query/kernel') == 0.5
  assert factor('final_norm/scale') == 1.0
  np.testing.assert_array_equal(factor('blocks/mlp/wi/kernel'),
                                0.5 ** np.array([4, 3, 2, 1]))
  updates = {'blocks': {'w': np.ones((4, 2, 3), np.float32)}}
  scaled, _ = optim.scale_by_name(factor).update(updates, None)
  np.testing.assert_array_equal(scaled['blocks']['w'][:, 0, 0],
                                0.5 ** np.array([4, 3, 2, 1]))


@pytest.mark.parametrize('setting, message', [
    (dict(freeze=('nothing/like/this',)), 'matches no parameter'),
    (dict(freeze=('.*',)), 'matches every parameter'),
    (dict(freeze=('block_[',)), 'not a regular expression'),
    (dict(layer_decay=0.0), r'layer_decay must be in \(0, 1\]'),
    (dict(lr_scale=(('embed/.*', -1.0),)), 'must be >= 0')])
def test_bad_settings_are_one_clear_error(tiny, setting, message):
  tiny.optim.update(setting)
  with pytest.raises(UsageError, match=message):
    Trainer(tiny)


@pytest.mark.parametrize('name, rate', [
    ('adamw', 3e-3), ('adam', 3e-3), ('sgd', 0.3), ('adafactor', 0.3),
    ('lion', 1e-3), ('muon', 3e-3)])
def test_every_optimizer_lowers_the_loss(tiny, name, rate):
  """Eight steps on one batch: each update rule fits it better."""
  tiny.optim.update(name=name, learning_rate=rate, warmup_steps=0,
                    nesterov=name == 'sgd')
  trainer = Trainer(tiny)
  state = trainer.init_state()
  batch = next(iter(trainer.data.train.to_iter_dataset()))
  losses = []
  for _ in range(8):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.95 * losses[0], (name, losses)


def test_an_unknown_optimizer_names_the_known_ones(tiny):
  tiny.optim.name = 'adagrad'
  with pytest.raises(UsageError, match='adamw, adam, sgd, adafactor, lion'):
    Trainer(tiny)
  tiny.optim.update(name='sgd', momentum=1.0)
  with pytest.raises(UsageError, match='momentum'):
    Trainer(tiny)


def _compiled_products(trainer):
  """Matrix products in the optimized train step (after XLA drops what
  nothing uses)."""
  state = trainer.abstract_state()
  batch = next(iter(trainer.data.train.to_iter_dataset()))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                   sharding=trainer.batch_sharding)
           for k, v in batch.items()}
  text = trainer.compile_train_step(state, batch).as_text()
  return sum(line.count(' dot(') for line in text.splitlines())


def test_frozen_parameters_form_no_gradient(tiny):
  """Freezing the lower block leaves its weight gradients uncomputed: the
  compiled step has fewer products (each frozen kernel's dW), and its
  parameters get no update."""
  full = _compiled_products(Trainer(tiny))
  tiny.optim.freeze = (r'block_0/.*', 'embed/embedding')
  frozen_trainer = Trainer(tiny)
  frozen = _compiled_products(frozen_trainer)
  kernels = sum(1 for name in _by_name(frozen_trainer.abstract_state().params)
                if name.startswith('block_0/') and name.endswith('kernel'))
  # No dW for block 0's kernels; no dx into block 0 from below it either.
  assert frozen <= full - kernels, (frozen, full, kernels)


def test_muon_orthogonalizes_the_blocks_projections_only():
  """Per-head attention kernels are matrices over (input, heads x head_dim)
  or (heads x head_dim, output); a scanned layer axis is a batch axis;
  embeddings, norms and biases go to AdamW."""
  shapes = {'block_0': {'attention': {'query': {'kernel': (8, 2, 4),
                                                'bias': (2, 4)},
                                      'out': {'kernel': (2, 4, 8)}},
                        'mlp': {'wi': {'kernel': (8, 16)}}},
            'blocks': {'mlp': {'wo': {'kernel': (3, 16, 8)}}},
            'embed': {'embedding': (32, 8)},
            'final_norm': {'scale': (8,)}}
  params = jax.tree.map(np.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple))
  numbers = optax.contrib.MuonDimensionNumbers
  flat, _ = jax.tree_util.tree_flatten_with_path(
      optim.muon_axes(params),
      is_leaf=lambda x: x is None or isinstance(x, numbers))
  as_tuples = {model_params.param_name(path): (a.reduction_axis,
                                               a.output_axis)
               for path, a in flat if a is not None}
  assert as_tuples == {
      'block_0/attention/query/kernel': ((0,), (1, 2)),
      'block_0/attention/out/kernel': ((0, 1), (2,)),
      'block_0/mlp/wi/kernel': ((0,), (1,)),
      'blocks/mlp/wo/kernel': ((1,), (2,))}
