"""Shared test setup: CPU, compilation cache, a tiny config, one dataset build."""

import os
import sys

# Before JAX is imported anywhere: CPU only, and a persistent compilation cache
# so that repeated runs of the suite compile far less.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(ROOT, '.cache', 'jax'))
# Programs that compile in a quarter of a second or more are cached, in the
# scripts and notebook kernels the tests start too (JAX's default is a
# second).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.25')
# The suite's time goes to compiling tiny models, not to running them: at
# LLVM optimization level 1 instead of 2, XLA compiles them about a sixth
# faster. (Level 0 compiles the tiny train step in 2.1 s instead of 3.2 s,
# but XLA:CPU then computes NaN in blockwise attention's gradient with a
# mask and a bias, for one batch row only: a miscompile, so not used.)
# Subprocesses the tests start inherit it. An XLA_FLAGS that sets
# --xla_backend_optimization_level itself wins.
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=1').strip()
# Two test processes (pytest -n 2) and the scripts they start share the
# cache; an entry read while another process still writes it is a warning
# and a compile, not an error (jax/_src/compiler.py).
# Scripts the tests start keep the system malloc: restarting each with
# mimalloc (lm/kernels/allocator.py) costs a second of startup and buys
# nothing on tiny models. The test of the restart sets it back.
os.environ.setdefault('LM_ALLOCATOR', 'system')
sys.path.insert(0, ROOT)  # configs/ and experiments/ are not installed.

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_compilation_cache_dir',
                  os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update(
    'jax_persistent_cache_min_compile_time_secs',
    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tfds data_dir holding the Shakespeare dataset, built once per session."""
  from lm.data import datasets  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('tfds'))
  datasets.get_builder('shakespeare', path)
  return path


def tiny_config(data_dir: str):
  """configs/default.py shrunk to a model and batch that train in seconds."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  # GPT-2's blocks, which the export and conversion tests expect.
  config.model.update(vocab_size=260, d_model=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, d_ff=64, max_len=64, activation='gelu',
                      gated_mlp=False, norm='layernorm', position='learned',
                      use_bias=True)
  config.data.update(data_dir=data_dir, tokenizer='byte', seq_len=32,
                     batch_size=8, eval_batch_size=64)
  # AdamW with base.py's settings, whatever the main job's optimizer: the
  # tests of steps, checkpoints and optimizer state are written for it.
  config.optim.update(name='adamw', momentum=0.9, min_lr_ratio=0.1,
                      learning_rate=1e-2, warmup_steps=2)
  config.train.update(num_steps=20, log_every=10, eval_every=20,
                      checkpoint_every=10, keep_checkpoints=5, eval_steps=8)
  # Samples at evaluations compile decoding; the tests that check them
  # turn them on.
  config.sample.update(max_new_tokens=8, at_eval=False)
  # Scoring a workdir (experiments/evaluate.py, compress --report) reads
  # the batches an evaluation in training reads, not the whole split.
  config.evaluate.update(max_batches=config.train.eval_steps)
  return config


@pytest.fixture
def tiny(data_dir):
  return tiny_config(data_dir)


@pytest.fixture(scope='session')
def float_workdir(data_dir, tmp_path_factory):
  """A trained tiny decoder's workdir, for compression to read (not write)."""
  from lm.train import loop  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('float'))
  config = tiny_config(data_dir)
  config.model.update(d_model=64, d_ff=128)
  loop.train_and_evaluate(config, workdir)
  return workdir


# The fast tier (`make test-fast`, `-m 'not slow'`) must reach every module
# of lm/: each test process reports the lm modules it imported, and a run
# of the whole fast tier fails naming those no test imported.
def _imported_lm_modules() -> list[str]:
  return sorted(name for name in sys.modules
                if name == 'lm' or name.startswith('lm.'))


def _every_lm_module() -> set[str]:
  found = set()
  for directory, _, names in os.walk(os.path.join(ROOT, 'lm')):
    for name in names:
      if name.endswith('.py'):
        path = os.path.relpath(os.path.join(directory, name), ROOT)[:-3]
        found.add(path.replace(os.sep, '.').removesuffix('.__init__'))
  return found


def _runs_the_whole_fast_tier(config) -> bool:
  return (config.option.markexpr == 'not slow' and not config.option.keyword
          and all(os.path.abspath(arg) == os.path.join(ROOT, 'tests')
                  for arg in config.args))


def pytest_configure(config):
  config.lm_modules = set()


# The longest tests (subprocesses that compile many programs, notebooks)
# start first, so that the two test processes end together rather than
# one running a long test alone at the end.
_FIRST = ('multidevice_test.py', 'multihost_test.py', 'colabs_test.py',
          'readme_test.py', 'real_weights_test.py', 'serve_test.py')


def pytest_collection_modifyitems(config, items):
  del config
  def rank(item):
    name = os.path.basename(str(item.path))
    return _FIRST.index(name) if name in _FIRST else len(_FIRST)
  items.sort(key=rank)  # Stable: each file's tests keep their order.


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # xdist: a test process finished.
  del error
  node.config.lm_modules.update(
      getattr(node, 'workeroutput', {}).get('lm_modules', []))


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  config = session.config
  if hasattr(config, 'workerinput'):  # A test process of pytest -n.
    config.workeroutput['lm_modules'] = _imported_lm_modules()
    return
  if not _runs_the_whole_fast_tier(config):
    return
  if not config.lm_modules:  # Run without -n: this process ran the tests.
    config.lm_modules.update(_imported_lm_modules())
  missing = sorted(_every_lm_module() - config.lm_modules)
  if missing:
    print(f'\nThe fast tier imported no test of {", ".join(missing)}; '
          'give each a fast test (or drop the slow mark of one that covers '
          'it).', file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
