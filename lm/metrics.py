"""Metrics: language modelling, classification, generated text.

Language modelling (loss, perplexity, bits per byte, token accuracy):
per-batch functions return *sums* (jit-friendly, and exact when batches are
combined); `summarize` turns accumulated sums into the reported numbers.
Bits per byte divides the total negative log-likelihood (in bits) by the
number of UTF-8 bytes the predicted tokens stand for, so models with
different tokenizers can be compared.

Classification: accuracy, macro and per-class precision/recall/F1 and the
confusion matrix, from label and prediction arrays. Generated text: corpus
BLEU and ROUGE-1/2/L computed here the way sacrebleu and rouge-score do
(tests hold them to those packages), chrF from sacrebleu, and SQuAD's exact
match and token F1 for answers.
"""

import collections
import math
import re
import string

import jax
import jax.numpy as jnp
import numpy as np
import sacrebleu
from sacrebleu.tokenizers import tokenizer_13a as sacrebleu_13a


def argmax(x):
  """jnp.argmax over the last axis (the first maximum; the first NaN if any),
  as int32.

  XLA:CPU runs jnp.argmax as one (value, index) reduction that does not
  vectorize: over bench-gpt's [2048, 8192] logits it took 37 ms of a 680 ms
  train step, and 146 us of each decode step at [8, 8192] (26 us this way:
  a max, a compare and a min).
  """
  best = jnp.max(x, axis=-1, keepdims=True)
  hit = (x == best) | jnp.isnan(x)
  index = jnp.arange(x.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(hit, index, x.shape[-1]), axis=-1)


def token_nll(logits_BLV, targets_BL):
  """Negative log-likelihood of each target token, in nats (float32)."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None],
                                        axis=-1)[..., 0]
  return log_z_BL - target_logit_BL


def lm_sums(logits_BLV, targets_BL, weights_BL, token_bytes_V=None):
  """Sums over a batch: nll, correct predictions, tokens (and bytes)."""
  nll_BL = token_nll(logits_BLV, targets_BL)
  correct_BL = argmax(logits_BLV) == targets_BL
  sums = {
      'nll': jnp.sum(nll_BL * weights_BL),
      'correct': jnp.sum(correct_BL * weights_BL),
      'tokens': jnp.sum(weights_BL),
  }
  if token_bytes_V is not None:
    sums['bytes'] = jnp.sum(jnp.take(token_bytes_V, targets_BL) * weights_BL)
  return sums


def classification_sums(logits_BC, labels_B, weights_B):
  """Sums over a batch of sequences: nll, correct, count, confusion matrix."""
  nll_B = token_nll(logits_BC[:, None], labels_B[:, None])[:, 0]
  predictions_B = argmax(logits_BC)
  num_classes = logits_BC.shape[-1]
  confusion_CC = jnp.einsum(
      'b,bt,bp->tp', weights_B, jax.nn.one_hot(labels_B, num_classes),
      jax.nn.one_hot(predictions_B, num_classes))
  return {'nll': jnp.sum(nll_B * weights_B),
          'correct': jnp.sum((predictions_B == labels_B) * weights_B),
          'tokens': jnp.sum(weights_B), 'confusion': confusion_CC}


def rint_counts(matrix) -> np.ndarray:
  """A confusion matrix summed in floating point, as integer counts."""
  return np.rint(np.asarray(matrix)).astype(np.int64)


def summarize(sums) -> dict[str, float]:
  """The reported numbers from accumulated sums (LM or classification)."""
  if 'confusion' in sums:
    matrix = rint_counts(sums['confusion'])
    report = report_from_confusion(matrix, [str(i) for i in range(len(
        matrix))])
    return {'loss': float(sums['nll']) / max(float(sums['tokens']), 1.0),
            **{k: report[k] for k in ('accuracy', 'macro_f1',
                                      'macro_precision', 'macro_recall')}}
  sums = {k: float(np.asarray(v)) for k, v in sums.items()}
  loss = sums['nll'] / max(sums['tokens'], 1.0)
  return {
      'loss': loss,
      'perplexity': math.exp(min(loss, 700.0)),
      'bits_per_byte': sums['nll'] / math.log(2) / max(sums['bytes'], 1.0),
      'token_accuracy': sums['correct'] / max(sums['tokens'], 1.0),
  }


# --------------------------------------------------------- classification ---


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """[true class, predicted class] counts."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
  return matrix


def classification_report(labels, predictions, class_names: list[str]
                          ) -> dict:
  """Accuracy, macro and per-class precision/recall/F1, confusion matrix."""
  return report_from_confusion(
      confusion_matrix(labels, predictions, len(class_names)), class_names)


def report_from_confusion(matrix: np.ndarray, class_names: list[str]
                          ) -> dict:
  """classification_report from a [true, predicted] count matrix.

  A class never predicted has precision 0 (and one never present recall 0),
  as scikit-learn reports them with zero_division=0.
  """
  true_positive = np.diag(matrix).astype(np.float64)
  predicted, actual = matrix.sum(0), matrix.sum(1)
  precision = np.divide(true_positive, predicted,
                        out=np.zeros_like(true_positive), where=predicted > 0)
  recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive),
                     where=actual > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator,
                 out=np.zeros_like(true_positive), where=denominator > 0)
  return {
      'accuracy': float(true_positive.sum() / max(matrix.sum(), 1)),
      'macro_precision': float(precision.mean()),
      'macro_recall': float(recall.mean()),
      'macro_f1': float(f1.mean()),
      'per_class': {name: {'precision': float(p), 'recall': float(r),
                           'f1': float(f), 'support': int(s)}
                    for name, p, r, f, s in zip(class_names, precision, recall,
                                                f1, actual)},
      'confusion_matrix': matrix.tolist(),
  }


# ------------------------------------------------------ generated text -----


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
  tokenize = sacrebleu_13a.Tokenizer13a()
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
