"""The family registry: every family builds through one code path, and a new
family is one registration away from training, decoding and conversion."""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from lm import convert
from lm import restore
from lm.infer import generate
from lm.infer import sampling
from lm.io import config_file
from lm.model import layers
from lm.model import params as model_params
from lm.model import registry
from lm.model.attention import Attention
from lm.model.config import ModelConfig
from lm.model.hf.rules import Architecture
from lm.model.hf.rules import heads_in
from lm.model.hf.rules import heads_out
from lm.model.hf.rules import linear
from lm.model.hf.rules import norm
from lm.model.hf.rules import same
from lm.perf import flops
from lm.train import loop
from tests.conftest import tiny_config

# --------------------------------------------- a family defined right here --


class ParallelBlock(nn.Module):
  """GPT-J's block: attention and the MLP read one norm's output side by
  side, and both add to the residual."""

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD, positions_BL):
    config = self.config
    h_BLD = layers.make_norm(config.norm, config.norm_eps,
                             config.compute_dtype, config.weights_dtype,
                             'norm')(x_BLD)
    attention = Attention(
        num_heads=config.num_heads, num_kv_heads=config.kv_heads,
        head_dim=config.head_width, rotary_theta=config.rotary_theta,
        use_bias=False, name='attention')
    mlp = layers.Mlp(d_ff=config.d_ff, activation=config.activation,
                     use_bias=False, name='mlp')
    return (x_BLD + attention(h_BLD, positions_BL, decode=self.decode)
            + mlp(h_BLD))


class ParallelDecoder(nn.Module):
  """A causal decoder of ParallelBlocks with a tied output layer."""

  config: ModelConfig
  batch_inputs: ClassVar[dict[str, str]] = {'inputs': 'tokens_BL'}

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, *,
               deterministic: bool = True, decode: bool = False,
               logits_at_B=None):
    del deterministic  # No dropout.
    config = self.config
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]),
                                      tokens_BL.shape)
    embed = layers.Embed(config.vocab_size, config.d_model, config.init_std,
                         name='embed')
    x_BLD = embed(tokens_BL)
    for i in range(config.num_layers):
      x_BLD = ParallelBlock(config, decode, name=f'block_{i}')(x_BLD,
                                                              positions_BL)
    x_BLD = layers.make_norm(config.norm, config.norm_eps, jnp.float32,
                             jnp.float32, 'final_norm')(x_BLD)
    if logits_at_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_at_B[:, None, None], axis=1)
    return embed.attend(x_BLD).astype(jnp.float32)


def _hf_rules(config: ModelConfig):
  n, k, h = config.num_heads, config.kv_heads, config.head_width
  table = [same('embed.weight', 'embed/embedding'),
           *norm('norm_f', 'final_norm', with_bias=False)]
  for i in range(config.num_layers):
    hf, lm = f'layers.{i}', f'block_{i}'
    table += [*norm(f'{hf}.norm', f'{lm}/norm', with_bias=False),
              heads_in(f'{hf}.q.weight', f'{lm}/attention/query/kernel', n, h),
              heads_in(f'{hf}.k.weight', f'{lm}/attention/key/kernel', k, h),
              heads_in(f'{hf}.v.weight', f'{lm}/attention/value/kernel', k, h),
              heads_out(f'{hf}.o.weight', f'{lm}/attention/out/kernel', n, h),
              linear(f'{hf}.up.weight', f'{lm}/mlp/wi/kernel'),
              linear(f'{hf}.down.weight', f'{lm}/mlp/wo/kernel')]
  return table


_HF_KEYS = ('vocab_size', 'd_model', 'num_layers', 'num_heads',
            'num_kv_heads', 'd_ff', 'max_len', 'rotary_theta', 'norm_eps')


def _config_from_hf(hf: dict, names: set[str]) -> dict:
  del names
  return dict(family='parallel_decoder', position='rotary', norm='rmsnorm',
              activation='silu', use_bias=False,
              **{key: hf[key] for key in _HF_KEYS})


def _config_to_hf(config: ModelConfig) -> dict:
  return {'model_type': 'parallel_tiny',
          **{key: getattr(config, key) for key in _HF_KEYS}}


def _check(config: ModelConfig) -> None:
  assert config.position == 'rotary' and config.norm == 'rmsnorm'


PARALLEL_DECODER = registry.Family(
    name='parallel_decoder', module=ParallelDecoder, objectives=('causal',),
    attention_layers=lambda config: config.num_layers, generates=True,
    check=_check, hf_layouts={'parallel_tiny': Architecture(
        _hf_rules, _config_from_hf, _config_to_hf, requires={})})


@pytest.fixture(autouse=True)
def parallel_decoder():
  """The one registration (module, objectives, FLOP count, config rules and
  the Hugging Face layout), for this file's tests only."""
  registry.register(PARALLEL_DECODER)
  yield
  registry.unregister(PARALLEL_DECODER.name)

# ------------------------------------------------------------------ tests --


def _config_of(family: str) -> ModelConfig:
  extra = {'lstm': dict(num_classes=3),
           'parallel_decoder': dict(position='rotary', norm='rmsnorm',
                                    activation='silu', use_bias=False)}
  return ModelConfig(family=family, vocab_size=64, d_model=32, num_layers=2,
                     num_heads=4, d_ff=64, max_len=32,
                     **extra.get(family, {}))


@pytest.mark.slow
@pytest.mark.parametrize('family', registry.names() + ['parallel_decoder'])
def test_every_registered_family_builds_and_runs_through_the_registry(
    family):
  config = _config_of(family)
  config.validate()
  model = registry.build_model(config)
  params = model_params.init_params(model, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
  outputs = model.apply({'params': params}, **model_params.model_inputs(
      model, {'inputs': tokens, 'encoder_inputs': tokens}))
  assert outputs.shape[:1] == (2,)
  assert np.all(np.isfinite(np.asarray(outputs)))
  assert flops.train_flops_per_token(config, 8) > 0


@pytest.mark.slow
def test_a_family_registered_in_one_place_trains_decodes_and_converts(
    data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.model.update(family='parallel_decoder', position='rotary',
                      norm='rmsnorm', activation='silu', use_bias=False)
  config.optim.warmup_steps = 0
  config.train.update(num_steps=1, log_every=1, eval_every=1,
                      checkpoint_every=1)
  workdir = str(tmp_path / 'trained')
  lines = []
  final = loop.train_and_evaluate(config, workdir, log=lines.append)
  assert np.isfinite(final['loss'])
  assert any(line.startswith('step 1/1 | loss') for line in lines)

  hf_dir, imported_dir = str(tmp_path / 'hf'), str(tmp_path / 'imported')
  assert convert.export_workdir(workdir, hf_dir) == 'parallel_tiny'
  convert.import_checkpoint(hf_dir, imported_dir, base.get_base_config())
  trained, imported = restore.workdir(workdir), restore.workdir(imported_dir)
  assert imported.model_config == trained.model_config
  assert config_file.load_config(imported_dir).data.eval_batch_size == (
      convert.IMPORTED_EVAL_BATCH_SIZE)
  tokens = jnp.array([[5, 7, 11, 13]])
  model = registry.build_model(trained.model_config)
  np.testing.assert_allclose(
      model.apply({'params': imported.params}, tokens),
      model.apply({'params': trained.params}, tokens), rtol=1e-6)

  settings = sampling.SamplingConfig(max_new_tokens=4, temperature=0.0)
  texts = generate.complete(imported.model_config, imported.params,
                            imported.tokenizer, ['ROMEO:'], settings)
  assert len(texts) == 1
