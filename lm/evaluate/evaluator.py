"""A model, its data's evaluation batches and the compiled eval step: what
scoring a workdir needs, and what training reports at evaluations.

`Evaluator` builds no optimizer, train step, pruning masks or DP state:
lm/evaluate/score.py scores a checkpoint with it alone, and
lm/train/trainer.py holds one for its validation.
"""

import functools
import itertools
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections

from lm import sharding
from lm.data import config as data_config
from lm.errors import UsageError
from lm.evaluate import batch_metrics
from lm.model import registry
from lm.model.config import ModelConfig


def validate_model_and_data(config: ml_collections.ConfigDict
                            ) -> ModelConfig:
  """The sections that scoring a trained model reads (model, data, mesh),
  and that the model fits the data; returns the parsed model section."""
  model_config = ModelConfig.from_config(config.model)
  data_config.DataConfig.from_config(config.data)
  sharding.MeshConfig.from_config(config.mesh)
  check_model_fits_data(model_config, config)
  return model_config


def check_model_fits_data(model_config: ModelConfig,
                          config: ml_collections.ConfigDict) -> None:
  """The family trains with the objective, and the sequences fit the model
  (what needs the data itself, load_data checks once it is built)."""
  objective = config.data.objective
  family = registry.get(model_config.family)
  if objective not in family.objectives:
    trained = [name for name in registry.names()
               if objective in registry.get(name).objectives]
    raise UsageError(
        f'data.objective={objective!r} trains {" or ".join(trained)} models, '
        f'but model.family={family.name!r}, which trains with '
        f'{list(family.objectives)}')
  if model_config.num_classes and objective != 'classify':
    raise UsageError(f'model.num_classes={model_config.num_classes} makes a '
                     "classifier; train it with data.objective='classify'")
  if objective == 'masked' and not model_config.mlm_head:
    raise UsageError('data.objective=masked needs model.mlm_head=True')
  longest = data_config.longest_sequence(config.data)
  limit = model_config.context_limit
  if longest > limit:
    raise UsageError(
        f'data.seq_len/target_len ({longest} tokens) exceed model.max_len='
        f'{limit}, the longest sequence the model takes; raise '
        'model.max_len or shorten the data')


def load_data(config: ml_collections.ConfigDict, model_config: ModelConfig,
              make_tokenizer: Callable[[], Any]):
  """This process's share of the run's data (lm/data/build.py), encoded
  with the tokenizer `make_tokenizer()` builds (data.tokenizer's), after
  checking that the model fits it: what training reads."""
  # Imported here: the data stack (grain, tensorflow-datasets) is not
  # installed where the benchmark runs.
  from lm.data import build  # pylint: disable=g-import-not-at-top

  def make():
    return build.make(config.data, make_tokenizer(), jax.process_index(),
                      jax.process_count())

  return _checked(config, model_config, _first_process_first(make))


def load_evaluation_data(config: ml_collections.ConfigDict,
                         model_config: ModelConfig,
                         make_tokenizer: Callable[[], Any]):
  """`load_data`'s evaluation splits alone, encoded with the tokenizer
  `make_tokenizer()` reads (the workdir's own): what scoring reads. The
  train split is neither read nor encoded."""
  from lm.data import build  # pylint: disable=g-import-not-at-top

  def make():
    return build.make(config.data, make_tokenizer(), jax.process_index(),
                      jax.process_count(), evaluation_only=True)

  return _checked(config, model_config, _first_process_first(make))


def _first_process_first(make: Callable[[], Any]):
  """make() on every process, the first before the others: it builds (and
  caches) datasets and tokenizers that they then read, so that no two
  processes write the same files."""
  data = make() if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('lm: data built')
  if jax.process_index() != 0:
    data = make()
  return data


def _checked(config, model_config: ModelConfig, data):
  from lm.data import build  # pylint: disable=g-import-not-at-top
  if config.data.objective == 'classify':
    _check_classes(config, model_config, data.class_names)
  _check_vocab(config, model_config, data.tokenizer.vocab_size,
               build.extra_ids(data))
  return data


def _check_classes(config, model_config: ModelConfig, names: list[str]):
  if model_config.num_classes != len(names):
    raise UsageError(
        f'dataset {config.data.name!r} has {len(names)} classes '
        f'({", ".join(names)}) but model.num_classes='
        f'{model_config.num_classes}; set it to {len(names)}')


def _check_vocab(config, model_config: ModelConfig, tokenizer_size: int,
                 extra_ids: int):
  needed = tokenizer_size + extra_ids
  if needed > model_config.vocab_size:
    raise UsageError(
        f'the tokenizer has {tokenizer_size} tokens'
        + (f' and data.objective={config.data.objective!r} adds '
           f'{extra_ids}' if extra_ids else '')
        + f', but model.vocab_size={model_config.vocab_size}; raise it '
        f'to at least {needed}')


class Evaluator:
  """The eval step of `model` compiled for `mesh`, and the metrics it sums
  over the evaluation batches of `data` (lm/data/build.py's)."""

  def __init__(self, config: ml_collections.ConfigDict,
               model_config: ModelConfig, model, mesh, data):
    self.config, self.model, self.mesh, self.data = config, model, mesh, data
    # Ids past the tokenizer's ([MASK], sentinels) stand for no text.
    self.token_bytes = jnp.zeros(model_config.vocab_size, jnp.int32).at[
        :len(data.token_bytes)].set(data.token_bytes)
    self._batch_sharding = sharding.batch_sharding(mesh)
    self._step = sharding.with_rules(jax.jit(
        functools.partial(batch_metrics.batch_sums, model),
        out_shardings=sharding.replicated(mesh)), mesh)

  def step(self, params, batch) -> dict:
    """The metric sums of one batch of this process's rows (host arrays)."""
    return self._step(params, sharding.put_batch(batch, self._batch_sharding),
                      self.token_bytes)

  def batches(self, split: str = 'validation'):
    """The batches of `split`: any split a task dataset has; 'validation'
    of a language-model corpus."""
    from lm.data import build  # pylint: disable=g-import-not-at-top
    return build.evaluation(self.data, split, self.config.data.name)

  def sums(self, params, split: str = 'validation', max_batches: int = 0,
           on_batch=None) -> dict:
    """The metric sums over the first `max_batches` batches of `split` (all
    for 0); `on_batch(number)` is called before each (a progress line)."""
    batches = self.batches(split)
    if max_batches > 0:
      batches = itertools.islice(batches, max_batches)
    totals = None
    for number, batch in enumerate(batches, 1):
      if on_batch:
        on_batch(number)
      sums = self.step(params, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
      raise UsageError('the evaluation split produced no batches')
    return jax.device_get(totals)

  def evaluate(self, params, split: str = 'validation',
               max_batches: int = 0) -> dict[str, float]:
    """batch_metrics.summarize of `sums`: loss, perplexity, bits per byte,
    accuracy (and precision/recall/F1 for classifiers)."""
    return batch_metrics.summarize(self.sums(params, split, max_batches))
