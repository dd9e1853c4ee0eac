"""Deep Compression: k-means sharing, Huffman codes, the file round trip."""

import jax
import numpy as np

from lm import restore
from lm.compress import deep_compression
from lm.compress import prune
from lm.compress import workdirs
from lm.io import layout
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig


def test_huffman_round_trip_and_shorter_codes_for_frequent_symbols():
  rng = np.random.default_rng(0)
  symbols = rng.choice([3, 7, 11, 400], size=5000, p=[0.7, 0.2, 0.05, 0.05])
  encoded = deep_compression.huffman_encode(symbols)
  np.testing.assert_array_equal(deep_compression.huffman_decode(encoded),
                                symbols)
  lengths = dict(zip(encoded['symbols'].tolist(),
                     encoded['lengths'].tolist()))
  assert lengths[3] == 1 and lengths[7] == 2
  # Close to the entropy (1.26 bits per symbol here), far below 2 bits.
  assert len(encoded['bits']) * 8 < 1.45 * len(symbols)
  single = deep_compression.huffman_encode(np.full(10, 5))
  np.testing.assert_array_equal(deep_compression.huffman_decode(single),
                                np.full(10, 5))


def test_kmeans_finds_well_separated_clusters():
  rng = np.random.default_rng(1)
  centers = np.array([-1.0, 0.2, 2.0])
  values = np.concatenate([c + 0.01 * rng.standard_normal(200)
                           for c in centers])
  codebook, index = deep_compression.kmeans_1d(values, 3)
  np.testing.assert_allclose(codebook, centers, atol=0.01)
  np.testing.assert_array_equal(index, np.repeat([0, 1, 2], 200))


def test_the_file_holds_the_pruned_shared_weights():
  config = ModelConfig(vocab_size=64, d_model=32, num_layers=1,
                              num_heads=4, d_ff=64)
  params = model_params.init_params(registry.build_model(config), jax.random.key(0))
  pruned = prune.prune_params(params, prune.PruneConfig(pattern='2:4'),
                              prune.input_axes(config))
  data, stats = deep_compression.encode(pruned, bits=4)
  decoded = deep_compression.decode(data)
  assert stats['compressed_bytes'] == len(data)
  assert jax.tree.structure(decoded) == jax.tree.structure(pruned)
  kernel = np.asarray(pruned['block_0']['mlp']['wi']['kernel'])
  got = decoded['block_0']['mlp']['wi']['kernel']
  np.testing.assert_array_equal(got == 0, kernel == 0)  # same zeros
  assert len(np.unique(got[got != 0])) <= 16
  assert np.abs(got - kernel).max() < 0.25 * np.abs(kernel).max()
  # The embedding table (no zeros) is shared too; norms come back exactly.
  assert len(np.unique(decoded['embed']['embedding'])) <= 16
  np.testing.assert_array_equal(decoded['final_norm']['scale'],
                                pruned['final_norm']['scale'])


def test_a_deep_compressed_workdir_decodes_to_its_checkpoint(float_workdir,
                                                             tmp_path):
  pruned, output = str(tmp_path / 'pruned'), str(tmp_path / 'dc')
  workdirs.prune_workdir(float_workdir, pruned,
                         prune.PruneConfig(pattern='unstructured',
                                           sparsity=0.7))
  stats = workdirs.deep_compress_workdir(pruned, output, bits=4)
  with open(f'{output}/{layout.DEEP_COMPRESSION}', 'rb') as f:
    data = f.read()
  assert stats['compressed_bytes'] == len(data)
  # Norms, biases and the file's headers weigh in a model this small; the
  # pruned, shared, coded kernels and embeddings shrink far more.
  assert stats['ratio'] > 4 and stats['coded_ratio'] > 8, stats
  restored = restore.workdir(output).params
  jax.tree.map(np.testing.assert_array_equal, restored,
               deep_compression.decode(data))
