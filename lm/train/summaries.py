"""What a training run reports besides its log lines: TensorBoard files in
`<workdir>/tensorboard` and text samples at each evaluation.

Tags (lm/evaluate/curves.py reads them back, and so does TensorBoard):
  train/*      loss, token_accuracy, grad_norm, learning_rate, skipped,
               param_norm, tokens_per_s, mfu (each log step)
  eval/*       the validation metrics (each evaluation)
  samples/i    the i-th of config.sample.prompts continued (each evaluation
               of a causal language model, with config.sample.at_eval)
  params/*     weight histograms (each evaluation, with train.histograms)
"""

import dataclasses
import os
from typing import Any, Callable

import flax.traverse_util
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from lm import sections
from lm.errors import UsageError
from lm.infer import generate
from lm.infer import sampling
from lm.io import layout
from lm.io import tensorboardx
from lm.model import registry


@dataclasses.dataclass(frozen=True)
class SampleConfig(sections.Section):
  """Samples of a causal language model at each evaluation (with
  at_eval): printed, and written to TensorBoard as text (samples/<i>)."""

  NAME = 'sample'
  prompts: tuple[str, ...] = ('ROMEO:\n', 'JULIET:\n')
  max_new_tokens: int = 96
  temperature: float = 0.8
  top_k: int = 40
  top_p: float = 1.0
  seed: int = 0
  at_eval: bool = True

  def validate(self) -> None:
    try:
      self.settings().validate()
    except UsageError as e:
      raise UsageError(f'sample.{e}') from None
    sampling.check_seed(self.seed, 'sample.seed')

  def settings(self) -> sampling.SamplingConfig:
    return sampling.SamplingConfig(
        max_new_tokens=self.max_new_tokens, temperature=self.temperature,
        top_k=self.top_k, top_p=self.top_p)


class Writer:
  """The run's TensorBoard writer; on processes other than the first, where
  one process speaks for all, it writes nothing."""

  def __init__(self, workdir: str, primary: bool = True):
    self._writer = (tensorboardx.load().SummaryWriter(
        os.path.join(workdir, layout.TENSORBOARD)) if primary else None)

  def scalars(self, prefix: str, values: dict[str, float], step: int):
    if self._writer:
      for name, value in values.items():
        self._writer.add_scalar(f'{prefix}/{name}', value, step)

  def texts(self, prefix: str, texts: list[str], step: int):
    if self._writer:
      for i, text in enumerate(texts):
        self._writer.add_text(f'{prefix}/{i}', text, step)

  def histograms(self, params: Any, step: int):
    """Call on every process: the first gathers the others' shards."""
    if jax.process_count() > 1:
      params = multihost_utils.process_allgather(params, tiled=True)
    if self._writer:
      flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep='/')
      for name, value in flat.items():
        self._writer.add_histogram(f'params/{name}', np.asarray(value,
                                                                np.float32),
                                   step)

  def close(self):
    if self._writer:
      self._writer.close()


# Compiled once per parameter structure; run at log steps only, so the
# train step itself does no extra work.
param_norm = jax.jit(optax.tree.norm)


def eval_sampler(config: ml_collections.ConfigDict, model_config,
                 tokenizer) -> Callable[[Any], list[str]] | None:
  """params -> each prompt followed by its sampled continuation, for a run
  whose evaluations show samples; None for one whose do not (not a causal
  language model, no prompts, config.sample.at_eval off, or several
  processes, where experiments/generate.py samples afterwards)."""
  sample_config = SampleConfig.from_config(config.sample)
  if not (sample_config.at_eval and sample_config.prompts
          and config.data.objective == 'causal'
          and registry.get(model_config.family).generates
          and not model_config.num_classes and jax.process_count() == 1):
    return None
  settings = sample_config.settings()
  prompts = list(sample_config.prompts)

  def sample(params) -> list[str]:
    texts = generate.complete(model_config, params, tokenizer, prompts,
                              settings, sample_config.seed)
    return [prompt + text for prompt, text in zip(prompts, texts)]

  return sample

