"""Data augmentation for fine-tuning classifiers (EDA, Wei & Zou 2019, plus
token masking).

Each training example, each time it is drawn, is perturbed with rates from
`data.augment` (0 turns an operation off):

  synonym     each word with a WordNet synonym is replaced by one of them,
              chosen at random, with this probability (needs the Debian
              package wordnet-base; lm/data/wordnet.py)
  delete      each word is dropped with this probability (one always stays)
  swap        this fraction of the words (rounded) is swapped with another
              word of the text, one random pair at a time
  token_mask  each token id is replaced by the padding id with this
              probability -- a token the model reads (unlike padding, it is
              not masked out of attention) but that carries no text

The randomness comes from grain's per-element generator, so the same step
sees the same perturbation after a resume. Evaluation data is never
augmented.
"""

import dataclasses
import re

import numpy as np

from lm import sections
from lm.errors import UsageError

RATES = ('synonym', 'delete', 'swap', 'token_mask')
_WORD = re.compile(r'^(\W*)(\w+)(\W*)$')


@dataclasses.dataclass(frozen=True)
class AugmentConfig(sections.Section):
  """Training-time augmentation of classification text: each operation's
  rate, in [0, 1) (0 turns it off)."""

  NAME = 'data.augment'
  synonym: float = 0.0
  delete: float = 0.0
  swap: float = 0.0
  token_mask: float = 0.0

  def validate(self) -> None:
    for name in RATES:
      rate = getattr(self, name)
      if not 0.0 <= rate < 1.0:
        raise UsageError(f'data.augment.{name} must be in [0, 1), got {rate}')


@dataclasses.dataclass(frozen=True)
class Augmenter:
  synonym: float = 0.0
  delete: float = 0.0
  swap: float = 0.0
  token_mask: float = 0.0
  synonyms: dict | None = None  # word -> its synonyms (needed for synonym)

  @classmethod
  def from_config(cls, augment_config, synonyms_fn=None) -> 'Augmenter':
    """The data.augment section's operations (checked by AugmentConfig)."""
    rates = {name: float(augment_config[name]) for name in RATES}
    synonyms = None
    if rates['synonym']:
      if synonyms_fn is None:
        from lm.data import wordnet  # pylint: disable=g-import-not-at-top
        synonyms_fn = wordnet.synonyms
      synonyms = synonyms_fn()
    return cls(**rates, synonyms=synonyms)

  @property
  def enabled(self) -> bool:
    return any(getattr(self, name) for name in RATES)

  def text(self, text: str, rng: np.random.Generator) -> str:
    words = text.split()
    if not words:
      return text
    if self.synonym:
      words = [self._replace(w, rng) if rng.random() < self.synonym else w
               for w in words]
    if self.delete and len(words) > 1:
      kept = [w for w in words if rng.random() >= self.delete]
      words = kept or [words[rng.integers(len(words))]]
    if self.swap and len(words) > 1:
      for _ in range(int(round(self.swap * len(words)))):
        i, j = rng.choice(len(words), 2, replace=False)
        words[i], words[j] = words[j], words[i]
    return ' '.join(words)

  def _replace(self, word: str, rng: np.random.Generator) -> str:
    match = _WORD.match(word)
    if not match:
      return word
    prefix, core, suffix = match.groups()
    options = self.synonyms.get(core.lower())
    if not options:
      return word
    return prefix + options[rng.integers(len(options))] + suffix

  def tokens(self, ids: list[int], tokenizer, rng: np.random.Generator
             ) -> list[int]:
    """Token masking; the sequence's BOS/EOS ([CLS]/[SEP]) stay."""
    if not self.token_mask:
      return ids
    keep = {tokenizer.bos_id, tokenizer.eos_id}
    masked = rng.random(len(ids)) < self.token_mask
    return [tokenizer.pad_id if m and t not in keep else t
            for t, m in zip(ids, masked)]
