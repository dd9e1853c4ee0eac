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


@pytest.mark.parametrize('warmup, total, ratio', [(2, 20, 0.1), (0, 7, 0.5),
                                                  (5, 6, 0.0)])
def test_the_schedule_is_warmup_then_cosine(tiny, warmup, total, ratio):
  tiny.optim.update(warmup_steps=warmup, min_lr_ratio=ratio)
  ours = optim.warmup_cosine(optim.schedule_values(tiny.optim, total))
  theirs = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tiny.optim.learning_rate,
      warmup_steps=warmup, decay_steps=total,
      end_value=tiny.optim.learning_rate * ratio)
  for step in range(total + 3):
    np.testing.assert_allclose(ours(step), theirs(step), rtol=1e-6,
                               atol=1e-9, err_msg=str(step))


def test_runs_of_other_lengths_and_rates_share_one_program(tiny):
  """The schedule's numbers are an argument of the train step, not
  constants: a longer run, another warmup or peak rate compile nothing
  new (nor miss the persistent cache)."""
  trainer = Trainer(tiny, with_data=False)
  state = trainer.abstract_state()
  batch = {key: jax.ShapeDtypeStruct((8, 32), dtype,
                                     sharding=trainer.batch_sharding)
           for key, dtype in (('inputs', np.int32), ('targets', np.int32),
                              ('weights', np.float32))}
  texts = []
  for steps, warmup, rate in ((20, 2, 1e-2), (300, 30, 3e-4)):
    tiny.train.num_steps = steps
    tiny.optim.update(warmup_steps=warmup, learning_rate=rate)
    trainer = Trainer(tiny, with_data=False)
    step = trainer._train_step_jit  # pylint: disable=protected-access
    texts.append(step.lower(state, batch, *trainer.step_args).as_text())
  assert texts[0] == texts[1]


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


@pytest.mark.slow
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


def _described(tiny, **model):
  """What the tiny model (4 blocks, with `model` overrides) says of its
  parameters."""
  from lm.model import registry  # pylint: disable=g-import-not-at-top
  from lm.model.config import ModelConfig  # pylint: disable=g-import-not-at-top
  tiny.model.update(num_layers=4, **model)
  built = registry.build_model(ModelConfig.from_config(tiny.model))
  return model_params.describe(model_params.logical_abstract_params(built))


def _factors(described, decay=0.5):
  return {name: optim.lr_factor(name, info, (), decay, 4)
          for name, info in described.items()}


def test_layer_decay_slows_lower_layers_geometrically(tiny):
  factor = _factors(_described(tiny))
  assert factor['embed/embedding'] == 0.5 ** 5
  assert factor['position_embed/embedding'] == 0.5 ** 5
  assert factor['block_0/mlp/wi/kernel'] == 0.5 ** 4
  assert factor['block_3/attention/query/kernel'] == 0.5
  assert factor['final_norm/scale'] == 1.0
  stacked = _factors(_described(tiny, scan_layers=True))
  np.testing.assert_array_equal(stacked['blocks/mlp/wi/kernel'],
                                0.5 ** np.array([4, 3, 2, 1]))
  updates = {'blocks': {'w': np.ones((4, 2, 3), np.float32)}}
  scaled, _ = optim.scale_by_name(
      lambda _: stacked['blocks/mlp/wi/kernel']).update(updates, None)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _muon_axes(described) -> dict:
  """{name: (reduction axes, output axes)} of what Muon orthogonalizes."""
  nested = {}
  for name in described:  # Nested dicts, as the model's params are.
    node = nested
    *path, leaf = name.split('/')
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = np.zeros(1)
  numbers = optax.contrib.MuonDimensionNumbers
  flat, _ = jax.tree_util.tree_flatten_with_path(
      optim.muon_axes(described)(nested),
      is_leaf=lambda x: x is None or isinstance(x, numbers))
  return {model_params.param_name(path): (a.reduction_axis, a.output_axis)
          for path, a in flat if a is not None}


def test_muon_orthogonalizes_the_blocks_projections_only(tiny):
  """Per-head attention kernels are matrices over (input, heads x head_dim)
  or (heads x head_dim, output); a scanned layer axis is a batch axis;
  embeddings, norms and biases go to AdamW."""
  axes = _muon_axes(_described(tiny))
  assert axes['block_0/attention/query/kernel'] == ((0,), (1, 2))
  assert axes['block_0/attention/out/kernel'] == ((0, 1), (2,))
  assert axes['block_0/mlp/wi/kernel'] == ((0,), (1,))
  assert all(name.startswith('block_') and name.endswith('/kernel')
             for name in axes), sorted(axes)
  assert len(axes) == 4 * 6  # q, k, v, out, wi, wo in each block
  stacked = _muon_axes(_described(tiny, scan_layers=True))
  assert stacked['blocks/mlp/wo/kernel'] == ((1,), (2,))
  assert stacked['blocks/attention/out/kernel'] == ((1, 2), (3,))


def test_renamed_modules_keep_muon_and_layer_decay(tiny, monkeypatch):
  """The optimizer asks the model where a parameter sits: renaming the
  blocks, the stack and the embeddings changes no factor and no axis."""
  fresh = tiny.copy_and_resolve_references
  before = [_described(fresh()), _described(fresh(), scan_layers=True)]
  monkeypatch.setattr(model_params, 'BLOCK', 'layer{}')
  monkeypatch.setattr(model_params, 'STACK', 'stack')
  monkeypatch.setattr(model_params, 'EMBED', 'tokens')
  monkeypatch.setattr(model_params, 'EMBEDDINGS',
                      ('tokens',) + model_params.EMBEDDINGS[1:])
  after = [_described(fresh()), _described(fresh(), scan_layers=True)]

  def renamed(name):
    parts = name.split('/')
    return '/'.join({'blocks': 'stack', 'embed': 'tokens'}.get(
        part, part.replace('block_', 'layer')) for part in parts)

  for old, new in zip(before, after):
    assert set(map(renamed, old)) == set(new) != set(old)
    factors, new_factors = _factors(old), _factors(new)
    axes, new_axes = _muon_axes(old), _muon_axes(new)
    assert {renamed(name) for name in axes} == set(new_axes)
    for name in old:
      np.testing.assert_array_equal(factors[name],
                                    new_factors[renamed(name)])
      assert axes.get(name) == new_axes.get(renamed(name))
