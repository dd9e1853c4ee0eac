"""Metrics of generated text: corpus BLEU and ROUGE-1/2/L computed the way
sacrebleu and rouge-score do (tests hold them to those packages), chrF from
sacrebleu, and SQuAD's exact match and token F1 for answers.
"""

import collections
import math
import re
import string

import numpy as np

from lm import errors


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n])
                             for i in range(len(tokens) - n + 1))


def bleu(hypotheses: list[str], references: list[str],
         max_order: int = 4) -> float:
  """Corpus BLEU (Papineni et al., 2002), 0-100, one reference each.

  Computed as sacrebleu computes it by default: 13a tokenization, clipped
  n-gram precisions up to 4, the brevity penalty over the corpus, and
  "exp" smoothing of orders with no match.
  """
  errors.require('eval', 'sacrebleu')
  # Imported here: sacrebleu is lm[eval]'s, not the core's.
  from sacrebleu.tokenizers import tokenizer_13a  # pylint: disable=g-import-not-at-top
  tokenize = tokenizer_13a.Tokenizer13a()
  matches, totals = np.zeros(max_order), np.zeros(max_order)
  hyp_len = ref_len = 0
  for hyp, ref in zip(hypotheses, references, strict=True):
    hyp_tokens, ref_tokens = tokenize(hyp).split(), tokenize(ref).split()
    hyp_len, ref_len = hyp_len + len(hyp_tokens), ref_len + len(ref_tokens)
    for n in range(1, max_order + 1):
      hyp_counts, ref_counts = _ngrams(hyp_tokens, n), _ngrams(ref_tokens, n)
      matches[n - 1] += sum((hyp_counts & ref_counts).values())
      totals[n - 1] += sum(hyp_counts.values())
  # No match at all, or no n-gram of some order (every hypothesis shorter
  # than n): the geometric mean is zero.
  if not matches.any() or not totals.all():
    return 0.0
  log_precisions, smooth = [], 1.0
  for n in range(max_order):
    if matches[n] == 0:
      smooth *= 2
      log_precisions.append(math.log(1.0 / (smooth * totals[n])))
    else:
      log_precisions.append(math.log(matches[n] / totals[n]))
  brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
  return 100.0 * brevity * math.exp(sum(log_precisions) / max_order)


def chrf(hypotheses: list[str], references: list[str]) -> float:
  """Character n-gram F-score (Popović, 2015), sacrebleu's chrF, 0-100."""
  errors.require('eval', 'sacrebleu')
  import sacrebleu  # pylint: disable=g-import-not-at-top
  return sacrebleu.corpus_chrf(hypotheses, [references]).score


def _rouge_tokens(text: str) -> list[str]:
  """rouge-score's default tokenization: lowercase alphanumeric runs."""
  return re.sub(r'[^a-z0-9]+', ' ', text.lower()).split()


def _f1(overlap: float, hyp_total: int, ref_total: int) -> float:
  if overlap == 0:
    return 0.0
  precision, recall = overlap / hyp_total, overlap / ref_total
  return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
  previous = [0] * (len(b) + 1)
  for x in a:
    current = [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y
                     else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
  """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Lin, 2004), 0-100.

  As rouge-score computes them without stemming: n-gram overlap for
  ROUGE-N, longest common subsequence for ROUGE-L, per pair, then averaged.
  """
  scores = collections.defaultdict(list)
  for hyp, ref in zip(hypotheses, references, strict=True):
    h, r = _rouge_tokens(hyp), _rouge_tokens(ref)
    for n in (1, 2):
      hyp_counts, ref_counts = _ngrams(h, n), _ngrams(r, n)
      scores[f'rouge{n}'].append(_f1(
          sum((hyp_counts & ref_counts).values()),
          sum(hyp_counts.values()), sum(ref_counts.values())))
    scores['rougeL'].append(_f1(_lcs_length(h, r), len(h), len(r)))
  return {name: 100.0 * float(np.mean(values)) if values else 0.0
          for name, values in scores.items()}


def _squad_normalize(text: str) -> list[str]:
  """SQuAD's answer normalization: lowercase, no punctuation or articles."""
  text = ''.join(c for c in text.lower() if c not in string.punctuation)
  return re.sub(r'\b(a|an|the)\b', ' ', text).split()


def exact_match(predictions: list[str], answers: list[str]) -> float:
  """Share of predictions equal to the answer after normalization, 0-100."""
  hits = [_squad_normalize(p) == _squad_normalize(a)
          for p, a in zip(predictions, answers, strict=True)]
  return 100.0 * float(np.mean(hits)) if hits else 0.0


def token_f1(predictions: list[str], answers: list[str]) -> float:
  """Mean bag-of-tokens F1 between prediction and answer (SQuAD), 0-100."""
  scores = []
  for prediction, answer in zip(predictions, answers, strict=True):
    p, a = _squad_normalize(prediction), _squad_normalize(answer)
    if not p or not a:
      scores.append(float(p == a))
      continue
    common = sum((collections.Counter(p) & collections.Counter(a)).values())
    scores.append(_f1(common, len(p), len(a)))
  return 100.0 * float(np.mean(scores)) if scores else 0.0
