"""Mesh rules, and sharded training and decoding on 8 CPU devices equal
to one device.

The tests marked `needs_8_devices` need devices that must be requested
before JAX starts: tests/multidevice_test.py runs this file in a subprocess
with XLA_FLAGS=--xla_force_host_platform_device_count=8 (run it directly
that way, too). In the main, single-device test process they are skipped.
"""

import shutil

import jax
import numpy as np
import pytest

from lm import restore
from lm import sharding
from lm.errors import UsageError
from lm.infer import generate
from lm.infer import sampling
from lm.train import loop
from lm.train.trainer import Trainer
from tests.conftest import tiny_config

needs_8_devices = pytest.mark.skipif(
    jax.device_count() < 8,
    reason='needs 8 devices; tests/multidevice_test.py runs it with them')
P = jax.sharding.PartitionSpec


def test_mesh_shape_pads_to_four_axes_and_fills_the_minus_one():
  assert sharding.mesh_shape((-1,), 8) == (8, 1, 1, 1)
  assert sharding.mesh_shape((2, -1, 2), 8) == (2, 2, 2, 1)
  assert sharding.mesh_shape((1,), 8) == (1, 1, 1, 1)  # one of 8 devices


@pytest.mark.parametrize('shape, message', [
    ((3, 1, 1), r'uses 3 devices, which does not divide the 8 devices'),
    ((-1, -1), 'at most one -1'),
    ((1, 1, 1, 1, 1), 'needs 1 to 4 sizes'),
    ((0, 8), 'sizes must be positive')])
def test_bad_mesh_shapes_are_refused(shape, message):
  with pytest.raises(UsageError, match=message):
    sharding.mesh_shape(shape, 8)


def test_rules_split_parameters_and_activations():
  mesh = jax.sharding.AbstractMesh((2, 2, 4, 1), sharding.AXES)
  attention = ('embed', 'heads', 'head_dim')
  assert sharding.spec_for(attention, (32, 4, 8), mesh) == P(
      'fsdp', 'tensor', None)
  # 2 KV heads do not split over 4 tensor devices: they stay whole.
  assert sharding.spec_for(('embed', 'kv_heads', 'head_dim'), (32, 2, 8),
                           mesh) == P('fsdp', None, None)
  # Activations: the batch takes data, fsdp and expert; 'embed' stays whole.
  assert sharding.spec_for(('batch', 'length', 'embed'), (8, 16, 32),
                           mesh) == P(('data', 'fsdp', 'expert'), None, None)
  # Inside an expert's buffer the batch gives up the expert axis.
  experts = jax.sharding.AbstractMesh((2, 1, 1, 2), sharding.AXES)
  assert sharding.spec_for(('expert', 'batch', 'capacity', 'embed'),
                           (2, 8, 4, 32), experts) == P(
                               'expert', ('data', 'fsdp'), None, None)


def _config(data_dir, shape, **model):
  config = tiny_config(data_dir)
  config.mesh.shape = shape
  config.model.update(model)
  config.optim.warmup_steps = 0  # So that the first step changes params.
  return config


def _one_step(config):
  """Loss and parameters after one train step, on the host."""
  trainer = Trainer(config)
  batch = next(iter(trainer.data.train.to_iter_dataset()))
  state, step_metrics = trainer.train_step(trainer.init_state(), batch)
  return jax.device_get(step_metrics), jax.device_get(state.params), state


def _assert_same_step(expected, actual, atol=1e-5):
  (metrics_a, params_a, _), (metrics_b, params_b, _) = expected, actual
  np.testing.assert_allclose(metrics_b['loss'], metrics_a['loss'], rtol=1e-5)
  # Updates are ~1e-2 (Adam, lr 1e-2). Adam divides each gradient by its
  # own size, so where the true gradient is ~0 (the key bias; an expert
  # weight few tokens reached) rounding noise becomes a visible update.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=atol),
               params_a, params_b)


@pytest.fixture(scope='module')
def single_device_step(data_dir):
  return _one_step(_config(data_dir, (1,)))


@needs_8_devices
def test_train_step_on_a_mesh_equals_one_device(data_dir, single_device_step):
  # Data, FSDP and tensor parallelism at once; checkpoint_restores_on_other
  # _meshes trains on (8, 1, 1) and (2, 4, 1).
  shape = (2, 2, 2)
  result = _one_step(_config(data_dir, shape))
  _assert_same_step(single_device_step, result)
  # The mesh is really used: FSDP splits d_model (32), tensor the heads (4).
  _, fsdp, tensor = shape
  query = result[2].params['block_0']['attention']['query']['kernel']
  assert query.sharding.shard_shape(query.shape) == (32 // fsdp, 4 // tensor,
                                                     8)
  # Adam's moments are laid out like their parameters (ZeRO-3).
  kernel = result[2].params['block_0']['mlp']['wi']['kernel']
  moments = [x for x in jax.tree.leaves(result[2].opt_state)
             if x.shape == kernel.shape]
  assert len(moments) == 2 * 2  # mu and nu of wi and of wo's transpose
  assert all(m.sharding.shard_shape(m.shape) in (
      kernel.sharding.shard_shape(kernel.shape),
      kernel.sharding.shard_shape(kernel.shape)[::-1]) for m in moments)


@needs_8_devices
def test_mixture_of_experts_step_on_a_mesh_equals_one_device(data_dir):
  moe = dict(num_experts=4, experts_per_token=2)
  expected = _one_step(_config(data_dir, (1,), **moe))
  # Experts split 2 ways, beside FSDP and tensor parallelism.
  result = _one_step(_config(data_dir, (1, 2, 2, 2), **moe))
  _assert_same_step(expected, result, atol=1e-4)
  assert 'expert' in result[2].params['block_0']['moe']['wi'].sharding.spec


@needs_8_devices
def test_checkpoint_restores_on_other_meshes(data_dir, tmp_path):
  """Saved on (8,1,1), continued on (2,4,1) and on one device: same run."""
  config = _config(data_dir, (8, 1, 1))
  config.train.update(num_steps=4, checkpoint_every=2, eval_every=4,
                      eval_steps=1)
  config.data.eval_batch_size = 8
  loop.train_and_evaluate(config, str(tmp_path / 'a'), stop_at_step=2)
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  finals = {}
  for name, shape in (('a', (2, 4, 1)), ('b', (1,))):
    config.mesh.shape = shape
    finals[name] = loop.train_and_evaluate(config, str(tmp_path / name))
  np.testing.assert_allclose(finals['b']['loss'], finals['a']['loss'],
                             rtol=1e-5)
  params = {name: restore.workdir(str(tmp_path / name)).params
            for name in finals}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=1e-5),
               params['a'], params['b'])


@needs_8_devices
def test_a_mesh_that_does_not_divide_the_devices_is_refused(data_dir):
  with pytest.raises(UsageError, match=r'uses 3 devices.*8 devices'):
    Trainer(_config(data_dir, (3, 1, 1)))


@needs_8_devices
def test_a_batch_the_data_axes_do_not_divide_is_refused(data_dir):
  config = _config(data_dir, (4, 2, 1))
  config.data.batch_size = 12
  with pytest.raises(UsageError, match=r'batch_size=12 is not divisible by '
                     r'8.*data=4 x fsdp=2'):
    Trainer(config)


@needs_8_devices
def test_tensor_parallel_decoding_equals_one_device(data_dir, tmp_path):
  config = _config(data_dir, (1,))
  config.train.update(num_steps=2, eval_every=2, checkpoint_every=2)
  loop.train_and_evaluate(config, str(tmp_path))
  restored = restore.workdir(str(tmp_path))
  settings = sampling.SamplingConfig(max_new_tokens=12, temperature=0.0)
  prompts = ['ROMEO:', 'O']
  alone = generate.complete(restored.model_config, restored.params,
                          restored.tokenizer, prompts, settings)
  mesh = sharding.make_mesh((1, 1, 4, 2))
  sharded = generate.complete(restored.model_config, restored.params,
                            restored.tokenizer, prompts, settings, mesh=mesh)
  assert sharded == alone
