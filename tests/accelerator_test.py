"""The GPU and TPU paths, checked on a CPU: the train step, the prefill and
decoding are lowered for 'cuda' and 'tpu' as those platforms would compile
them, and attention there is a fused kernel, never the [L, L] scores."""

import functools
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import pytest

from configs import base
from lm import sharding
from lm.errors import UsageError
from lm.infer import generate
from lm.infer import sampling
from lm.kernels import attention as attention_kernels
from lm.kernels import platform
from lm.kernels import tpu_compiler
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train import optim
from lm.train import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN = 256  # No other array of the model is SEQ_LEN x SEQ_LEN.
JAX_NAMES = {'gpu': 'cuda', 'tpu': 'tpu'}
FUSED_CALLS = {'gpu': '__gpu$xla.gpu.triton', 'tpu': 'tpu_custom_call'}


def llama_config(attention: str):
  """A small Llama-style run: rotary, RMSNorm, SwiGLU, GQA, bf16 compute."""
  config = base.get_base_config()
  config.model.update(
      vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
      d_ff=128, max_len=SEQ_LEN, position='rotary', norm='rmsnorm',
      gated_mlp=True, activation='silu', use_bias=False, tie_embeddings=False,
      dtype='bfloat16', attention=attention)
  config.data.update(seq_len=SEQ_LEN, batch_size=8)
  config.train.num_steps = 10
  config.optim.warmup_steps = 1
  return config


def lowered_train_step(on: str, attention: str, mesh=None) -> str:
  """The train step's StableHLO, traced and lowered for platform `on`."""
  config = llama_config(attention)
  model_config = ModelConfig.from_config(config.model)
  model = registry.build_model(model_config)
  boxed_params = model_params.logical_abstract_params(model)
  optimizer_for = functools.partial(
      optim.make_optimizer, config, model_config,
      described=model_params.describe(boxed_params))
  schedule_values = optim.schedule_values(config.optim,
                                          config.train.num_steps)
  optimizer = optimizer_for(optim.warmup_cosine(schedule_values))
  boxed = jax.eval_shape(lambda params: steps.TrainState(
      step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
      rng=jax.random.PRNGKey(0)), boxed_params)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       nn.unbox(boxed))
  batch = {key: jax.ShapeDtypeStruct((8, SEQ_LEN), dtype) for key, dtype in (
      ('inputs', jnp.int32), ('targets', jnp.int32), ('weights', jnp.float32))}
  step = functools.partial(steps.train_step, model=model,
                           optimizer_for=optimizer_for)
  if mesh is None:
    jitted = jax.jit(step)
    with platform.lowering_for(on):
      lowered = jitted.trace(state, batch, schedule_values).lower(
          lowering_platforms=(JAX_NAMES[on],))
    return lowered.as_text()
  state_shardings = sharding.logical_shardings(boxed, mesh)
  jitted = jax.jit(step, in_shardings=(state_shardings,
                                       sharding.batch_sharding(mesh),
                                       NamedSharding(mesh, P())),
                   out_shardings=(state_shardings, NamedSharding(mesh, P())))
  with platform.lowering_for(on), sharding.activation_rules(mesh):
    lowered = jitted.trace(state, batch, schedule_values).lower(
        lowering_platforms=(JAX_NAMES[on],))
  return lowered.as_text()


def scores_in(text: str) -> bool:
  """Whether any tensor of the program is [.., L, L]: attention's scores."""
  return bool(re.search(rf'x{SEQ_LEN}x{SEQ_LEN}x', text))


@pytest.mark.slow
@pytest.mark.parametrize('on, attention', [
    ('gpu', 'pallas'), ('tpu', 'auto'), ('tpu', 'pallas')])
def test_the_train_step_runs_attention_in_a_fused_kernel(on, attention):
  text = lowered_train_step(on, attention)
  assert FUSED_CALLS[on] in text
  assert not scores_in(text)


def test_auto_on_a_gpu_is_cudnn_or_says_why_not_here():
  try:
    text = lowered_train_step('gpu', 'auto')
  except RuntimeError as e:
    if 'cuDNN is not detected' not in str(e):
      raise
    pytest.skip("cuDNN's fused attention lowers only where its library "
                'is; the GPU device check covers it')
  assert 'cudnn' in text.lower() and not scores_in(text)


@pytest.mark.parametrize('on', ['gpu', 'tpu'])
def test_the_xla_kernel_is_seen_to_hold_the_scores(on):
  # What the tests above rule out, shown to be detectable.
  text = lowered_train_step(on, 'xla')
  assert scores_in(text) and FUSED_CALLS[on] not in text


@pytest.mark.parametrize('on', ['gpu', 'tpu'])
def test_an_8_device_fsdp_and_tensor_parallel_step_runs_the_kernel_per_shard(
    on):
  mesh = AbstractMesh((2, 2, 2, 1), sharding.AXES,
                      axis_types=(AxisType.Auto,) * 4)
  text = lowered_train_step(on, 'pallas', mesh)
  assert FUSED_CALLS[on] in text
  # Each device runs the kernel on its own rows and heads (a shard_map), so
  # XLA never gathers attention's inputs to one device.
  assert 'manual_computation' in text
  assert not scores_in(text)


@pytest.mark.parametrize('on', ['gpu', 'tpu'])
def test_prefill_and_decoding_lower_for_the_accelerators(on):
  config = ModelConfig.from_config(llama_config('auto').model)
  model = registry.build_model(config)
  params = model_params.abstract_params(model)
  settings = sampling.SamplingConfig(max_new_tokens=8, temperature=0.0)
  with platform.lowering_for(on):
    lowered = generate.generate_program.trace(
        model, settings, -1, None, params,
        jax.ShapeDtypeStruct((2, 16), jnp.int32),
        jax.ShapeDtypeStruct((2,), jnp.int32), jax.random.key(0)).lower(
            lowering_platforms=(JAX_NAMES[on],))
  assert 'while' in lowered.as_text()


def test_kernels_that_cannot_serve_say_why_and_give_way():
  call = attention_kernels.Call(
      dtype='float32', head_dim=64, query_len=200, key_len=200, causal=True,
      ordered=True, bias=False, key_mask=False)
  assert attention_kernels.choose('auto', call, 'cpu') == ('query_blocks',
                                                            None)
  kernel, note = attention_kernels.choose('cudnn', call, 'gpu')
  assert kernel == 'xla' and 'bfloat16 or float16' in note
  kernel, note = attention_kernels.choose('pallas', call, 'tpu')
  assert kernel == 'xla' and 'multiple of 128' in note
  kernel, note = attention_kernels.choose('pallas', call, 'cpu')
  assert kernel == 'query_blocks' and 'GPUs and TPUs' in note


@pytest.mark.slow
def test_logits_are_float32_from_bfloat16_compute():
  config = ModelConfig.from_config(llama_config('auto').model)
  model = registry.build_model(config)
  params = model_params.init_params(model, jax.random.key(0))
  tokens = jnp.zeros((1, 8), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p: model.apply({'params': p}, tokens))(params)
  products = [eqn for eqn in jaxpr.jaxpr.eqns
              if eqn.primitive.name == 'dot_general'
              and eqn.outvars[0].aval.shape[-1] == config.vocab_size]
  assert products
  for eqn in products:
    assert eqn.outvars[0].aval.dtype == jnp.float32
    assert {v.aval.dtype for v in eqn.invars} == {jnp.dtype(jnp.bfloat16)}


def test_no_backend_checks_outside_the_kernel_layer():
  pattern = re.compile(r"default_backend\(|\.platform\s*[!=]=|"
                       r"[!=]=\s*'(cpu|gpu|tpu|cuda|rocm)'")
  found = []
  for folder in ('lm', 'experiments', 'benchmarks', 'tools', 'configs'):
    for directory, _, names in os.walk(os.path.join(ROOT, folder)):
      for name in names:
        path = os.path.join(directory, name)
        relative = os.path.relpath(path, ROOT)
        if not name.endswith('.py') or relative.startswith('lm/kernels'):
          continue
        with open(path, encoding='utf-8') as f:
          found += [f'{relative}: {line.strip()}' for line in f
                    if pattern.search(line)]
  assert not found, found


def test_training_refuses_float16():
  from lm.errors import UsageError  # pylint: disable=g-import-not-at-top
  from lm.train import loop  # pylint: disable=g-import-not-at-top
  config = llama_config('auto')
  config.model.dtype = 'float16'
  with pytest.raises(UsageError, match="use 'bfloat16'"):
    loop.train_and_evaluate(config, '/nonexistent/never/written')


def test_compiling_for_a_tpu_slice_without_the_compiler_says_how_to_get_it(
    monkeypatch):
  find_spec = tpu_compiler.importlib.util.find_spec
  monkeypatch.setattr(tpu_compiler.importlib.util, 'find_spec',
                      lambda name: None if name == 'libtpu'
                      else find_spec(name))
  with pytest.raises(UsageError, match=r"needs the TPU compiler.*"
                     r"pip install .*'\.\[tpu-compile\]'"):
    tpu_compiler.topology('v5e:2x2')
  with pytest.raises(UsageError, match="'v5e:2x2', 'v5e:4x4'"):
    tpu_compiler.topology('v5e')
