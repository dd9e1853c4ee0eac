"""Memory savers change memory, not results: scanned layers, remat, and
gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.errors import UsageError
from lm.infer import generate
from lm.infer import sampling
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train.trainer import Trainer

_SMALL = dict(vocab_size=64, d_model=32, num_layers=3, num_heads=4,
              num_kv_heads=2, d_ff=64, max_len=32)


def stack_layers(params, num_layers):
  """Unscanned params (block_0, block_1, ...) in the scanned layout."""
  blocks = [params[f'block_{i}'] for i in range(num_layers)]
  stacked = {k: v for k, v in params.items() if not k.startswith('block_')}
  stacked['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return stacked


@pytest.mark.slow
@pytest.mark.parametrize('family', ['decoder', 'encoder_decoder'])
def test_scanned_layers_compute_what_the_loop_does(family):
  config = ModelConfig(family=family, **_SMALL)
  loop = registry.build_model(config)
  scanned = registry.build_model(ModelConfig(
      family=family, scan_layers=True, **_SMALL))
  params = model_params.init_params(loop, jax.random.key(0))
  if family == 'encoder_decoder':  # Both halves have their own stack.
    stacked = {**params, 'encoder': stack_layers(params['encoder'], 3),
               'decoder': stack_layers(params['decoder'], 3)}
  else:
    stacked = stack_layers(params, 3)
  assert jax.tree.structure(stacked) == jax.tree.structure(
      model_params.abstract_params(scanned))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  inputs = {'inputs': tokens, 'encoder_inputs': tokens}
  np.testing.assert_allclose(
      scanned.apply({'params': stacked},
                    **model_params.model_inputs(scanned, inputs)),
      loop.apply({'params': params}, **model_params.model_inputs(loop, inputs)),
      atol=1e-5)


@pytest.mark.slow
def test_scanned_layers_decode_with_the_kv_cache():
  loop = registry.build_model(ModelConfig(**_SMALL))
  scanned = registry.build_model(ModelConfig(scan_layers=True, **_SMALL))
  params = model_params.init_params(loop, jax.random.key(0))
  settings = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0)
  prompts = [[5, 6, 7], [9]]
  kwargs = dict(sampling=settings, rng=jax.random.key(0), eos_id=None)
  assert generate.generate(scanned, stack_layers(params, 3), prompts,
                         **kwargs) == generate.generate(loop, params, prompts,
                                                      **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_gives_the_same_gradients(remat):
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)

  params_of_loop = model_params.init_params(
      registry.build_model(ModelConfig(**_SMALL)), jax.random.key(0))

  def grads(**extra):
    model = registry.build_model(ModelConfig(**_SMALL, **extra))
    params = params_of_loop
    if extra.get('scan_layers'):
      params = stack_layers(params, 3)
    return jax.grad(lambda p: model.apply({'params': p}, tokens).sum())(
        params)

  def assert_close(expected, got):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-5),
                 expected, got)

  expected = grads()
  assert_close(expected, grads(remat=remat))
  assert_close(stack_layers(expected, 3), grads(remat=remat,
                                                scan_layers=True))


@pytest.mark.slow
def test_scan_and_full_remat_lower_the_compiled_peak_memory(tiny):
  tiny.model.update(num_layers=4, d_model=64, d_ff=256)
  tiny.data.update(seq_len=64, batch_size=16)
  without = Trainer(tiny).step_memory()
  tiny.model.update(scan_layers=True, remat='full')
  with_remat = Trainer(tiny).step_memory()
  # Activations are the temporaries; the parameters and state are the same.
  assert with_remat['temp_bytes'] < 0.5 * without['temp_bytes']
  assert with_remat['argument_bytes'] == without['argument_bytes']


@pytest.mark.slow
def test_accumulating_micro_batches_equals_one_big_batch(tiny):
  tiny.data.batch_size = 32
  tiny.optim.warmup_steps = 0
  results = []
  for accum in (1, 4):
    tiny.train.grad_accum_steps = accum
    trainer = Trainer(tiny)
    batch = next(iter(trainer.data.train.to_iter_dataset()))
    state, step_metrics = trainer.train_step(trainer.init_state(), batch)
    results.append((jax.device_get(step_metrics),
                    jax.device_get(state.params)))
  (metrics_1, params_1), (metrics_4, params_4) = results
  for key in ('loss', 'grad_norm', 'token_accuracy'):
    np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-5)
  # Adam turns near-zero gradients' rounding noise into visible updates.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               params_1, params_4)


def test_accumulation_must_divide_the_batch(tiny):
  tiny.train.grad_accum_steps = 3
  with pytest.raises(UsageError, match='batch_size=8 is not divisible by '
                     'train.grad_accum_steps=3'):
    Trainer(tiny)
