"""LoRA: adapters train alone and merge back into the same model."""

import flax.traverse_util
import jax
import numpy as np
import pytest

from lm import restore
from lm.compress import lora
from lm.compress import workdirs
from lm.errors import UsageError
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train import loop
from tests.conftest import tiny_config


@pytest.mark.slow
@pytest.mark.parametrize('scan', [False, True])
def test_merged_model_computes_what_the_adapters_do(scan):
  config = ModelConfig(
      vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64,
      scan_layers=scan, lora_rank=4, lora_alpha=8.0,
      lora_targets=('query', 'out', 'wi', 'wo'))
  model = registry.build_model(config)
  params = model_params.init_params(model, jax.random.key(0))
  # B starts at zero; give it values so the adapters change the outputs.
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  names = [n for n in flat if n.endswith('lora_b')]
  assert len(names) == (4 if scan else 8)
  for i, name in enumerate(names):
    flat[name] = jax.random.normal(jax.random.key(i), flat[name].shape) * 0.1
  params = flax.traverse_util.unflatten_dict(flat, sep='/')
  tokens = jax.random.randint(jax.random.key(9), (2, 8), 0, 64)
  with_adapters = model.apply({'params': params}, tokens)
  merged, merged_config = lora.merge(params, config)
  assert merged_config.lora_rank == 0
  plain = registry.build_model(merged_config)
  assert jax.tree.structure(merged) == jax.tree.structure(
      model_params.abstract_params(plain))
  np.testing.assert_allclose(plain.apply({'params': merged}, tokens),
                             with_adapters, atol=1e-5)
  # ... and the adapters did change them.
  flat.update({name: np.zeros(flat[name].shape) for name in names})
  zero_b = flax.traverse_util.unflatten_dict(flat, sep='/')
  assert not np.allclose(model.apply({'params': zero_b}, tokens),
                         with_adapters, atol=1e-3)


@pytest.mark.slow
def test_lora_fine_tuning_updates_only_the_adapters(float_workdir, data_dir,
                                                     tmp_path):
  config = tiny_config(data_dir)
  config.model.update(d_model=64, d_ff=128, lora_rank=4,
                      lora_targets=('query', 'value', 'wo'))
  config.init_from = float_workdir
  config.train.update(num_steps=6, eval_every=6, checkpoint_every=6)
  loop.train_and_evaluate(config, str(tmp_path / 'lora'))
  before = flax.traverse_util.flatten_dict(
      restore.workdir(float_workdir).params, sep='/')
  after = flax.traverse_util.flatten_dict(
      restore.workdir(str(tmp_path / 'lora')).params, sep='/')
  adapters = sorted(n for n in after if 'lora_' in n)
  assert len(adapters) == 2 * 3 * 2  # A and B, 3 targets, 2 layers
  assert set(after) - set(adapters) == set(before)
  for name in before:
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  assert all(np.abs(after[n]).max() > 0 for n in adapters if 'lora_b' in n)
  # The merged workdir is a plain model with the adapted outputs.
  workdirs.merge_lora_workdir(str(tmp_path / 'lora'),
                              str(tmp_path / 'merged'))
  merged = restore.workdir(str(tmp_path / 'merged'))
  adapted = restore.workdir(str(tmp_path / 'lora'))
  assert merged.model_config.lora_rank == 0
  tokens = np.arange(1, 17).reshape(2, 8)
  np.testing.assert_allclose(
      registry.build_model(merged.model_config).apply(
          {'params': merged.params}, tokens),
      registry.build_model(adapted.model_config).apply(
          {'params': adapted.params}, tokens), atol=1e-5)
  with pytest.raises(UsageError, match='no LoRA adapters'):
    workdirs.merge_lora_workdir(float_workdir, str(tmp_path / 'again'))


def test_bad_lora_targets_are_refused():
  with pytest.raises(UsageError, match='must name some of'):
    ModelConfig(lora_rank=4, lora_targets=('q_proj',)).validate()
