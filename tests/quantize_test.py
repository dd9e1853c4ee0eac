"""Weight-only int8/int4 quantization, the int8 KV cache, quantized workdirs."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from lm import restore
from lm.compress import quantize
from lm.compress import workdirs
from lm.errors import UsageError
from lm.evaluate import score
from lm.infer import generate
from lm.infer import sampling
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train import loop
from tests.conftest import tiny_config

INT8, INT4 = quantize.Quant(8), quantize.Quant(4, group=4)


def representable(shape, axis, group, levels, rng):
  """Weights q * 0.01 whose every scale group holds `levels`, its max: the
  quantizer's grid then holds them exactly."""
  q = np.moveaxis(rng.integers(-levels, levels + 1, size=shape), axis,
                  -1).copy()
  q.reshape(-1, group)[:, 0] = levels
  return np.moveaxis(q, -1, axis) * 0.01


@pytest.mark.parametrize('shape, contract', [((8, 6), (-2,)),
                                             ((4, 8, 6), (-3, -2))])
def test_weights_on_the_int8_grid_come_back_exactly(shape, contract):
  # One scale per output channel: the contracted axes form one group.
  w = np.random.default_rng(0).integers(-127, 128, shape) * 0.01
  w[(0,) * len(contract)] = 1.27  # every output channel's max is 1.27
  q, scale = quantize.quantize(w, contract, INT8)
  assert q.dtype == np.int8 and scale.shape == (1,) * len(contract) + shape[
      len(contract):]
  np.testing.assert_allclose(quantize.dequantize(q, scale, contract[-1], INT8),
                             w, atol=1e-6)


@pytest.mark.parametrize('shape, axis', [((8, 6), -2), ((3, 8, 6), -2),
                                         ((6, 8), -1)])
def test_weights_on_the_int4_grid_come_back_exactly(shape, axis):
  w = representable(shape, axis, INT4.group, 7, np.random.default_rng(1))
  q, scale = quantize.quantize(w, (axis,), INT4)
  halved = list(shape)
  halved[axis] //= 2
  assert q.dtype == np.uint8 and q.shape == tuple(halved)
  np.testing.assert_allclose(quantize.dequantize(q, scale, axis, INT4), w,
                             atol=1e-6)


def test_int4_clipping_search_never_does_worse_than_max_scaling():
  w = np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32)
  q, scale = quantize.quantize(w, (-2,), quantize.Quant(4, 16))
  error = (np.asarray(quantize.dequantize(q, scale, -2, quantize.Quant(4, 16)))
           - w) ** 2
  grouped = w.reshape(4, 16, 16)
  max_scale = np.abs(grouped).max(1, keepdims=True) / 7
  plain = ((np.clip(np.round(grouped / max_scale), -8, 7) * max_scale -
            grouped) ** 2).reshape(64, 16)
  per_group = lambda e: e.reshape(4, 16, 16).sum(1)
  assert np.all(per_group(error) <= per_group(plain) + 1e-6)
  assert per_group(error).sum() < per_group(plain).sum()


CONFIGS = {
    'gpt2': dict(family='decoder'),
    'llama_untied': dict(family='decoder', norm='rmsnorm', position='rotary',
                         gated_mlp=True, activation='silu', use_bias=False,
                         tie_embeddings=False, num_kv_heads=2),
    't5': dict(family='encoder_decoder', position='relative', norm='rmsnorm'),
    'bert_classifier': dict(family='encoder', num_classes=3, pooler=True),
}


@pytest.mark.slow
@pytest.mark.parametrize('name, bits', [
    ('gpt2', 'int8'), ('llama_untied', 'int4'), ('t5', 'int4'),
    ('bert_classifier', 'int8')])
def test_a_quantized_model_computes_with_what_its_integers_hold(name, bits):
  """Logits of the quantized model == the float model on q * scale."""
  config = ModelConfig(vocab_size=64, d_model=32, num_layers=2,
                              num_heads=4, d_ff=64, **CONFIGS[name])
  float_model = registry.build_model(config)
  params = model_params.init_params(float_model, jax.random.key(0))
  quantized_config = dataclasses.replace(config, quant=bits, quant_group=8)
  model = registry.build_model(quantized_config)
  q_params = quantize.quantize_params(params, model_params.abstract_params(model),
                                      quantized_config.quantization)
  kinds = {x.dtype for x in jax.tree.leaves(q_params)}
  assert np.dtype({'int8': np.int8, 'int4': np.uint8}[bits]) in kinds
  held = quantize.dequantize_params(q_params, model_params.abstract_params(
      float_model), quantized_config.quantization)
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 1, 64)
  inputs = (tokens, tokens) if config.family == 'encoder_decoder' else (
      tokens,)
  got = jax.jit(model.apply)({'params': q_params}, *inputs)
  want = jax.jit(float_model.apply)({'params': held}, *inputs)
  np.testing.assert_allclose(got, want, atol=2e-5)
  # ... and q * scale is close to the original weights.
  original = jax.jit(float_model.apply)({'params': params}, *inputs)
  spread = float(jnp.std(original))
  assert float(jnp.max(jnp.abs(got - original))) < {
      'int8': 0.05, 'int4': 0.5}[bits] * spread


@pytest.mark.slow
def test_the_int8_kv_cache_decodes_like_the_float_one():
  config = ModelConfig(vocab_size=64, d_model=32, num_layers=2,
                              num_heads=4, d_ff=64, position='rotary')
  model = registry.build_model(config)
  params = model_params.init_params(model, jax.random.key(0))
  int8_model = registry.build_model(dataclasses.replace(config, kv_cache='int8'))
  cache = generate.init_cache(int8_model, batch=2, cache_len=12)
  dtypes = {x.dtype for x in jax.tree.leaves(cache)}
  assert dtypes == {np.dtype(np.int8), np.dtype(np.float32)}
  prompt = jnp.array([[5, 9, 3, 7], [8, 2, 0, 0]])
  positions = jnp.broadcast_to(jnp.arange(4), (2, 4))

  def logits_with(m):
    out, _ = jax.jit(lambda p, c: m.apply(
        {'params': p, 'cache': c}, prompt, positions, decode=True,
        mutable=['cache']))(params, generate.init_cache(m, 2, 12))
    return out

  reference, got = logits_with(model), logits_with(int8_model)
  np.testing.assert_allclose(got, reference, atol=0.02 * float(
      jnp.std(reference)))
  settings = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0)
  tokens = generate.generate(int8_model, params, [[5, 9, 3], [7]],
                           sampling=settings, rng=jax.random.key(0),
                           eos_id=None)
  assert [len(t) for t in tokens] == [6, 6]


def test_int4_group_sizes_that_do_not_tile_are_refused():
  with pytest.raises(UsageError, match='quant_group=3 must be an even'):
    ModelConfig(quant='int4', quant_group=3).validate()
  model = registry.build_model(ModelConfig(
      vocab_size=64, d_model=24, num_heads=4, d_ff=48, quant='int4',
      quant_group=16))
  with pytest.raises(UsageError, match='groups of 16 do not tile an axis of '
                     '24'):
    model_params.abstract_params(model)


@pytest.mark.slow
def test_a_quantized_workdir_is_smaller_and_scores_close(float_workdir,
                                                         tmp_path):
  defaults = base.get_base_config()
  before = score.evaluate_workdir(float_workdir, 'validation', {},
                                       defaults)['metrics']['bits_per_byte']
  for bits, limit in (('int8', 0.01), ('int4', 0.05)):
    output = str(tmp_path / bits)
    workdirs.quantize_workdir(float_workdir, output, bits, group=16,
                              kv_cache='int8', defaults=defaults)
    restored = restore.workdir(output)
    assert restored.model_config.quant == bits
    # int4 models keep their embeddings (the tied output layer) at int8.
    assert restored.params['embed']['embedding'].dtype == np.int8
    assert restored.params['block_0']['mlp']['wi']['kernel'].dtype == (
        np.int8 if bits == 'int8' else np.uint8)
    after = score.evaluate_workdir(output, 'validation', {},
                                        defaults)['metrics']['bits_per_byte']
    assert abs(after / before - 1) < limit, (bits, before, after)
  with pytest.raises(UsageError, match='already quantized'):
    workdirs.quantize_workdir(str(tmp_path / 'int8'), str(tmp_path / 'again'),
                              'int4')
  with pytest.raises(UsageError, match='already exists and is not empty'):
    workdirs.quantize_workdir(float_workdir, str(tmp_path / 'int8'), 'int8')
  assert not os.path.exists(tmp_path / 'again')


def test_training_a_quantized_config_is_refused(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.model.quant = 'int8'
  with pytest.raises(UsageError, match='inference format'):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_the_report_counts_packed_int4_weights_and_skips_scales():
  from lm.evaluate import compression_report  # pylint: disable=g-import-not-at-top
  params = {'dense': {'kernel': np.array([[0.0, 1.0], [2.0, 0.0]]),
                      'kernel_scale': np.ones(2)},
            'packed': {'kernel': np.array([0x10, 0x00, 0x32], np.uint8)}}
  assert compression_report.count_weights(params) == (4 + 6, 2 + 3)
  rows = [{'params_bytes': 2**20, 'array_bytes': 2**21, 'weights': 10,
           'nonzero': 5, 'bits_per_byte': 2.0, 'decode_tokens_per_s': 100.0},
          {'params_bytes': 2**19, 'array_bytes': 2**19, 'weights': 10,
           'nonzero': 10, 'bits_per_byte': 2.1}]
  table = compression_report.markdown(rows, ['fp32', 'int8'])
  assert '| fp32 | 1.00 MiB | 2.00 MiB | 10 (50%) | 2.0000 | +0.00% | 100 |' \
      in table
  assert '| int8 | 0.50 MiB | 0.50 MiB | 10 (100%) | 2.1000 | +5.00% | nan |' \
      in table
