"""Pretraining objectives: how a window of tokens becomes one example.

  causal  next-token prediction (GPT): inputs w[:-1], targets w[1:]
  masked  masked LM (BERT, Devlin et al. 2019): 15% of positions are
          predicted; of those 80% become [MASK], 10% a random token and 10%
          stay, so the model cannot trust the visible token
  span    span corruption (T5, Raffel et al. 2020): 15% of tokens, in spans
          of mean length 3, are cut out; each span becomes one sentinel in
          the encoder input, and the decoder writes sentinel + span for each

Every example is a dict of equal-shape arrays with 'targets' and 'weights'
(1 where a target is scored), plus whatever the model family reads
(its module's `batch_inputs`). The ids these objectives add -- [MASK], the
sentinels -- come right after the tokenizer's vocabulary, so the model's
vocab_size must leave room for them (`extra_ids` says how many).
"""

import dataclasses

import numpy as np

from lm.errors import UsageError

# Which model family trains with which objective is the family's to say
# (lm/model/registry.py).
OBJECTIVES = ('causal', 'masked', 'span')


@dataclasses.dataclass(frozen=True)
class Objective:
  """An objective and its settings, for a tokenizer of `vocab_size` ids."""

  name: str
  vocab_size: int
  bos_id: int
  eos_id: int
  seq_len: int
  mask_rate: float = 0.15
  noise_density: float = 0.15
  mean_span_length: float = 3.0

  @classmethod
  def from_config(cls, data_config, tokenizer) -> 'Objective':
    """The data section's objective (checked by `check_settings`)."""
    return cls(
        name=data_config.objective, vocab_size=tokenizer.vocab_size,
        bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
        seq_len=data_config.seq_len, mask_rate=data_config.mask_rate,
        noise_density=data_config.noise_density,
        mean_span_length=data_config.mean_span_length)

  @property
  def window_len(self) -> int:
    """Tokens per window: one more for causal, whose targets are shifted."""
    return self.seq_len + 1 if self.name == 'causal' else self.seq_len

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @property
  def sentinel_id(self) -> int:
    """The first sentinel; span k is marked by sentinel_id + k."""
    return self.vocab_size

  def span_counts(self) -> tuple[int, int]:
    """(noise tokens, spans) per window; fixed, so shapes are static."""
    n = self.seq_len
    noise = min(max(int(round(n * self.noise_density)), 1), n - 1)
    spans = max(int(round(noise / self.mean_span_length)), 1)
    return noise, min(spans, noise, n - noise)

  @property
  def extra_ids(self) -> int:
    """How many ids past the tokenizer's this objective uses."""
    return {'causal': 0, 'masked': 1, 'span': self.span_counts()[1]}[
        self.name]

  def example(self, window: np.ndarray, rng: np.random.Generator
              ) -> dict[str, np.ndarray]:
    if self.name == 'causal':
      return causal_example(window)
    if self.name == 'masked':
      return masked_example(window, rng, self)
    return span_example(window, rng, self)


def check_settings(data_config) -> None:
  """The data section's corruption settings (for data/config.py)."""
  rates = (data_config.mask_rate, data_config.noise_density)
  if not all(0 < rate < 1 for rate in rates):
    raise UsageError('data.mask_rate and data.noise_density must be in '
                     f'(0, 1), got {rates[0]} and {rates[1]}')
  if data_config.mean_span_length < 1:
    raise UsageError('data.mean_span_length must be >= 1, got '
                     f'{data_config.mean_span_length}')
  if data_config.objective == 'span' and data_config.seq_len < 4:
    raise UsageError(f'span corruption needs data.seq_len >= 4, got '
                     f'{data_config.seq_len}')


def causal_example(window: np.ndarray) -> dict[str, np.ndarray]:
  return {'inputs': window[:-1].astype(np.int32),
          'targets': window[1:].astype(np.int32),
          'weights': np.ones(len(window) - 1, np.float32)}


def masked_example(window: np.ndarray, rng: np.random.Generator,
                   objective: Objective) -> dict[str, np.ndarray]:
  length = len(window)
  count = max(1, int(round(length * objective.mask_rate)))
  positions = rng.choice(length, count, replace=False)
  action = rng.random(count)
  inputs = window.astype(np.int32)  # a copy
  to_mask = positions[action < 0.8]
  to_randomize = positions[(action >= 0.8) & (action < 0.9)]
  inputs[to_mask] = objective.mask_id
  inputs[to_randomize] = rng.integers(0, objective.vocab_size,
                                      len(to_randomize))
  weights = np.zeros(length, np.float32)
  weights[positions] = 1.0
  return {'inputs': inputs, 'targets': window.astype(np.int32),
          'weights': weights}


def _random_partition(total: int, parts: int, rng: np.random.Generator
                      ) -> np.ndarray:
  """`parts` positive integers summing to `total`, uniformly at random."""
  cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def span_example(window: np.ndarray, rng: np.random.Generator,
                 objective: Objective) -> dict[str, np.ndarray]:
  """T5's span corruption of one window (noise spans alternate with text)."""
  noise, spans = objective.span_counts()
  noise_lengths = _random_partition(noise, spans, rng)
  text_lengths = _random_partition(len(window) - noise, spans, rng)
  encoder_inputs, targets, start = [], [], 0
  for k in range(spans):
    sentinel = objective.sentinel_id + k
    text_end = start + text_lengths[k]
    noise_end = text_end + noise_lengths[k]
    encoder_inputs += [*window[start:text_end], sentinel]
    targets += [sentinel, *window[text_end:noise_end]]
    start = noise_end
  encoder_inputs.append(objective.eos_id)
  targets.append(objective.eos_id)
  targets = np.asarray(targets, np.int32)
  # The decoder reads BOS, then the targets shifted right (teacher forcing).
  return {'encoder_inputs': np.asarray(encoder_inputs, np.int32),
          'inputs': np.concatenate([[objective.bos_id], targets[:-1]]
                                   ).astype(np.int32),
          'targets': targets,
          'weights': np.ones(len(targets), np.float32)}
