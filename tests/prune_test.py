"""Magnitude pruning: masks, N:M patterns, the schedule, training with masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import restore
from lm.compress import prune
from lm.compress import workdirs
from lm.errors import UsageError
from lm.io import config_file
from lm.io import train_data_file
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.train import loop
from tests.conftest import tiny_config

UNSTRUCTURED = prune.PruneConfig(pattern='unstructured', sparsity=0.5)
TWO_OF_FOUR = prune.PruneConfig(pattern='2:4')


def test_unstructured_mask_drops_the_smallest_weights():
  w = jnp.array(np.random.default_rng(0).standard_normal((16, 8)))
  mask = np.asarray(prune.magnitude_mask(w, 0.25, UNSTRUCTURED, -2))
  assert mask.sum() == 96
  assert np.abs(w)[~mask].max() < np.abs(w)[mask].min()


@pytest.mark.parametrize('axis', [-2, -3])
def test_two_of_four_keeps_the_two_largest_of_every_four_inputs(axis):
  w = jnp.array(np.random.default_rng(1).standard_normal((8, 8, 3)))
  mask = np.asarray(prune.magnitude_mask(w, 0.5, TWO_OF_FOUR, axis))
  groups = np.moveaxis(mask, axis, -1).reshape(-1, 4)
  assert np.all(groups.sum(-1) == 2)
  magnitudes = np.moveaxis(np.abs(np.asarray(w)), axis, -1).reshape(-1, 4)
  kept = np.where(groups, magnitudes, np.inf).min(-1)
  dropped = np.where(groups, -np.inf, magnitudes).max(-1)
  assert np.all(dropped < kept)


def test_partial_two_of_four_prunes_only_weights_the_pattern_would():
  w = jnp.array(np.random.default_rng(2).standard_normal((16, 4)))
  full = np.asarray(prune.magnitude_mask(w, 0.5, TWO_OF_FOUR, -2))
  half = np.asarray(prune.magnitude_mask(w, 0.25, TWO_OF_FOUR, -2))
  assert (~half).sum() == 16
  assert np.all(full <= half)  # what 25% prunes, 50% prunes too


def test_the_cubic_schedule_rises_from_zero_to_the_final_sparsity():
  c = prune.PruneConfig(pattern='unstructured', sparsity=0.8, start_step=10,
                        end_step=50)
  values = [float(prune.sparsity_at(s, c)) for s in (0, 10, 30, 50, 90)]
  assert values[:2] == [0.0, 0.0] and values[3:] == [pytest.approx(0.8)] * 2
  assert values[2] == pytest.approx(0.8 * (1 - 0.5 ** 3))
  one_shot = prune.PruneConfig(pattern='2:4', start_step=0, end_step=0)
  assert float(prune.sparsity_at(0, one_shot)) == 0.5


def test_input_axes_are_the_contracted_ones():
  config = ModelConfig(vocab_size=64, d_model=32, num_layers=1,
                              num_heads=4, d_ff=64, tie_embeddings=False)
  axes = prune.input_axes(config)
  assert axes['block_0/attention/query/kernel'] == -3  # [D, N, H]
  assert axes['block_0/attention/out/kernel'] == -2  # [N, H, D]: H
  assert axes['block_0/mlp/wi/kernel'] == -2 and axes['head/kernel'] == -2


@pytest.mark.parametrize('kwargs, match', [
    (dict(pattern='3of4'), "'N:M' such as '2:4'"),
    (dict(pattern='4:2'), 'needs 0 < N < M'),
    (dict(pattern='unstructured', sparsity=1.0), 'must be in'),
    (dict(pattern='2:4', start_step=5, end_step=2), 'start_step=5'),
    (dict(targets='(['), 'not a regular expression'),
])
def test_bad_prune_settings_are_refused(kwargs, match):
  with pytest.raises(UsageError, match=match):
    prune.PruneConfig(**kwargs).validate()


@pytest.mark.slow
def test_gradual_pruning_in_training_leaves_exact_zeros(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.prune.update(pattern='2:4', start_step=2,
                      end_step=12, every=5)
  config.train.update(num_steps=16, checkpoint_every=8)
  loop.train_and_evaluate(config, str(tmp_path), stop_at_step=8)
  halfway = restore.workdir(str(tmp_path)).params
  c = prune.PruneConfig.from_config(config.prune)
  assert 0 < prune.sparsity_of(halfway, c) < c.final_sparsity
  final = loop.train_and_evaluate(config, str(tmp_path))  # resumes masks
  params = restore.workdir(str(tmp_path)).params
  assert prune.sparsity_of(params, c) == pytest.approx(c.final_sparsity,
                                                       abs=0.01)
  # Pruned weights stayed zero while the rest kept training.
  kernel = params['block_0']['mlp']['wi']['kernel']
  was_zero = np.asarray(halfway['block_0']['mlp']['wi']['kernel']) == 0
  assert np.all(np.asarray(kernel)[was_zero] == 0)
  assert np.isfinite(final['loss'])
  groups = (np.asarray(kernel) != 0).reshape(-1, 4, kernel.shape[-1])
  assert np.all(groups.sum(1) == 2)
  # Untargeted parameters (embeddings, norms) keep all their weights.
  assert np.all(np.asarray(params['embed']['embedding']) != 0)


def test_one_shot_pruning_of_params():
  config = ModelConfig(vocab_size=64, d_model=32, num_layers=1,
                              num_heads=4, d_ff=64)
  params = model_params.init_params(registry.build_model(config), jax.random.key(0))
  pruned = prune.prune_params(params, TWO_OF_FOUR, prune.input_axes(config))
  assert prune.sparsity_of(pruned, TWO_OF_FOUR) == 0.5
  with pytest.raises(UsageError, match='matches no parameter'):
    prune.prune_params(params, prune.PruneConfig(pattern='2:4',
                                                 targets='nothing'), {})


@pytest.mark.slow
def test_a_pruned_workdir_keeps_its_pattern_in_its_config(float_workdir,
                                                          tmp_path):
  output = str(tmp_path / 'pruned')
  assert workdirs.prune_workdir(float_workdir, output, TWO_OF_FOUR) == 0.5
  restored = restore.workdir(output)
  assert prune.sparsity_of(restored.params, TWO_OF_FOUR) == 0.5
  assert config_file.load_config(output).prune.pattern == '2:4'
  # The count of train examples goes along (DP-SGD scores read it).
  assert train_data_file.train_examples(output) == (
      train_data_file.train_examples(float_workdir))
  assert train_data_file.train_examples(output) > 0
  dense = restore.workdir(float_workdir).params['block_0']['mlp']['wo']
  kept = restored.params['block_0']['mlp']['wo']['kernel'] != 0
  np.testing.assert_array_equal(restored.params['block_0']['mlp']['wo'][
      'kernel'][kept], dense['kernel'][kept])
