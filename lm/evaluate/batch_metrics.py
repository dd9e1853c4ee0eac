"""The model's forward pass on a batch, the metrics the train and eval steps
sum over batches, and what is reported from the sums.

Language modelling (loss, perplexity, bits per byte, token accuracy) and
classification (accuracy, macro and per-class precision/recall/F1, the
confusion matrix). Per-batch functions return *sums* (jit-friendly, and
exact when batches are combined); `summarize` turns accumulated sums into
the reported numbers. Bits per byte divides the total negative
log-likelihood (in bits) by the number of UTF-8 bytes the predicted tokens
stand for, so models with different tokenizers can be compared.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from lm.kernels.argmax import argmax
from lm.model import params as model_params


def forward(model, params, batch, **kwargs):
  """The model's outputs on a batch, and the auxiliary values its layers
  sowed in the 'aux' collection (lm/model/moe.py: router losses, expert
  load)."""
  return model.apply({'params': params},
                     **model_params.model_inputs(model, batch),
                     mutable=['aux'], **kwargs)


def batch_sums(model, params, batch, token_bytes_V=None, **kwargs):
  """Metric sums of one batch: what the eval step computes."""
  return output_sums(forward(model, params, batch, **kwargs)[0], batch,
                     token_bytes_V)


def output_sums(outputs, batch, token_bytes_V=None):
  """Per target token for the language-modelling objectives, per sequence
  for classification (batches with a 'label')."""
  if 'label' in batch:
    return classification_sums(outputs, batch['label'], batch['weights'])
  return lm_sums(outputs, batch['targets'], batch['weights'], token_bytes_V)


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
