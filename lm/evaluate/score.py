"""Scores a trained model on a split of its task.

Classifiers and language models are scored from their logits (the sums of
lm/evaluate/evaluator.py's eval step), with no optimizer or train step.
Text-to-text tasks are also scored on text the model writes: beam search
(or greedy) for encoder-decoder models, greedy continuation of the prompt
for decoders, then the dataset's metrics (BLEU and chrF for translation,
ROUGE for summarization, exact match and token F1 for QA) against the
references.
"""

import functools
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from lm import sharding
from lm.data import text_pairs
from lm.data import tokenizers
from lm.errors import UsageError
from lm.evaluate import batch_metrics
from lm.evaluate import evaluator as evaluator_lib
from lm.evaluate import privacy_spent
from lm.evaluate import text_metrics
from lm.infer import beam_search
from lm.infer import generate
from lm.infer import sampling
from lm.io import checkpoint
from lm.io import config_file
from lm.io import files
from lm.io import layout
from lm.io import train_data_file
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig

# Generation metric name -> function(predictions, references) -> value(s).
GENERATION_METRICS = {
    'bleu': text_metrics.bleu, 'chrf': text_metrics.chrf,
    'rouge': text_metrics.rouge, 'exact_match': text_metrics.exact_match,
    'token_f1': text_metrics.token_f1}
NUM_SHOWN = 5  # examples of generated text kept in the results


def generate_texts(evaluator: evaluator_lib.Evaluator, params: Any,
                   sources: list[str], eval_config, line=None) -> list[str]:
  """The model's output text for each source, in batches (counted on the
  live `line`, lm/progress.py's, where there is one)."""
  data, model = evaluator.data, evaluator.model
  tokenizer = data.tokenizer
  target_len = data.target_len
  seq_len, size = evaluator.config.data.seq_len, eval_config.batch_size
  outputs = []
  for start in range(0, len(sources), size):
    if line:
      line.show(f'writing text: {start:,} of {len(sources):,} examples')
    chunk = sources[start:start + size]
    batch = [data.encode_source(s) for s in chunk]
    # Every batch has the same shape, so decoding compiles once: the last
    # is filled with copies of its first row, and inputs padded to full
    # length.
    batch += batch[:1] * (size - len(batch))
    if data.objective == 'seq2seq':
      tokens = beam_search.translate(
          model, params, batch, max_new_tokens=target_len,
          bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
          pad_id=tokenizer.pad_id, beam_size=eval_config.beam_size,
          length_penalty=eval_config.length_penalty, source_len=seq_len)
    else:
      tokens = generate.generate(
          model, params, batch,
          sampling=sampling.SamplingConfig(max_new_tokens=target_len,
                                           temperature=0.0),
          rng=np.zeros(2, np.uint32), eos_id=tokenizer.eos_id,
          pad_id=tokenizer.pad_id, max_len=model.config.context_limit,
          prompt_len=seq_len - target_len)
    outputs += [tokenizer.decode(t).strip() for t in tokens[:len(chunk)]]
  return outputs


def score_generation(metric_names, predictions, references) -> dict:
  scores = {}
  for name in metric_names:
    value = GENERATION_METRICS[name](predictions, references)
    scores.update(value if isinstance(value, dict) else {name: value})
  return scores


def evaluate_workdir(workdir: str, split: str, eval_overrides: dict,
                     defaults: ml_collections.ConfigDict | None = None,
                     line=None, eval_batch_size: int | None = None,
                     task: ml_collections.ConfigDict | None = None) -> dict:
  """Scores the workdir's latest checkpoint on `split` of its own task, or
  of `task`'s (a config: its data and evaluate sections with the workdir's
  own model and tokenizer, e.g. an imported model zero-shot).

  `defaults` (configs/base.py) fills config keys an older workdir lacks.
  `line` (lm/progress.py's live line, or None) counts the batches.
  `eval_batch_size` replaces the config's data.eval_batch_size.
  Writes <workdir>/eval/<dataset>_<split>.json and returns what it wrote.
  """
  own = config = config_file.load_config(workdir, defaults)
  if task is not None:
    config = _on_task(own, task, workdir)
  eval_config = config.evaluate
  eval_config.update({k: v for k, v in eval_overrides.items()
                      if v is not None})
  if eval_batch_size:
    config.data.eval_batch_size = eval_batch_size
  # The sections were checked whole when the workdir was trained (and a
  # --task config when it was read); what scoring adds is this model on
  # this data.
  model_config = ModelConfig.from_config(config.model)
  evaluator_lib.check_model_fits_data(model_config, config)
  model = registry.build_model(model_config)
  mesh = sharding.make_mesh(config.mesh.shape)
  sharding.check_batch(config.data.eval_batch_size, mesh,
                       'data.eval_batch_size', jax.process_count())
  # The checkpoint is read (and checked) before the data is built.
  params, step = checkpoint.load_params(
      workdir, model_params.abstract_params(model))
  data = evaluator_lib.load_evaluation_data(
      config, model_config, functools.partial(tokenizers.load_tokenizer,
                                              workdir))
  evaluator = evaluator_lib.Evaluator(config, model_config, model, mesh, data)
  sums = evaluator.sums(params, split, eval_config.max_batches,
                        _counter(line))
  result = {'workdir': workdir, 'dataset': config.data.name, 'split': split,
            'step': step, 'metrics': batch_metrics.summarize(sums)}
  if 'confusion' in sums:
    report = batch_metrics.report_from_confusion(
        batch_metrics.rint_counts(sums['confusion']), data.class_names)
    result.update(per_class=report['per_class'],
                  confusion_matrix=report['confusion_matrix'])
  if own.privacy.dp_sgd:  # What training the workdir's params has spent.
    result['privacy'] = privacy_spent.of_run(
        own, step, train_data_file.train_examples(workdir))
  if isinstance(data, text_pairs.TextPairData):
    pairs = data.pairs(split)
    if eval_config.max_examples > 0:
      pairs = pairs[:eval_config.max_examples]
    if not pairs:
      raise UsageError(f'the {split} split of {config.data.name} is empty')
    sources, references = zip(*pairs)
    predictions = generate_texts(evaluator, params, list(sources),
                                 eval_config, line)
    result['metrics'].update(score_generation(data.metrics,
                                              predictions, list(references)))
    result['generation'] = {
        'examples': len(pairs),
        'decoding': (f'beam {eval_config.beam_size}, length penalty '
                     f'{eval_config.length_penalty}'
                     if data.objective == 'seq2seq' else 'greedy')}
    result['samples'] = [
        {'source': s, 'reference': r, 'prediction': p}
        for s, r, p in list(zip(sources, references, predictions))[:NUM_SHOWN]]
  if line:
    line.close()
  path = layout.eval_path(workdir, config.data.name, split)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_atomic(path, json.dumps(result, indent=2, ensure_ascii=False))
  result['path'] = path
  return result


def _on_task(own: ml_collections.ConfigDict, task: ml_collections.ConfigDict,
             workdir: str) -> ml_collections.ConfigDict:
  """`task` with the workdir's model and tokenizer in place of its own."""
  config = ml_collections.ConfigDict(task.to_dict())
  config.model = own.model
  config.data.tokenizer = workdir
  config.init_from = ''
  return config


def _counter(line):
  """Counts batches on the live line as they are scored (None: no line)."""
  if line:
    return lambda number: line.show(f'scoring: batch {number:,}')
  return None


def markdown_table(result: dict) -> str:
  names = list(result['metrics'])
  lines = [f'| dataset | split | step | {" | ".join(names)} |',
           '| --- ' * (3 + len(names)) + '|',
           f'| {result["dataset"]} | {result["split"]} | {result["step"]} | '
           + ' | '.join(f'{result["metrics"][n]:.4f}' for n in names) + ' |']
  for name, row in result.get('per_class', {}).items():
    lines.append(f'class {name}: precision {row["precision"]:.4f} recall '
                 f'{row["recall"]:.4f} f1 {row["f1"]:.4f} support '
                 f'{row["support"]}')
  if 'unknown' in result.get('privacy', {}):
    lines.append(f'DP-SGD: epsilon unknown: {result["privacy"]["unknown"]}')
  elif 'privacy' in result:
    lines.append('DP-SGD: epsilon {epsilon:.3f}, delta {delta:.2e} after '
                 '{steps} steps (noise multiplier {noise_multiplier}, clip '
                 '{l2_clip})'.format(**result['privacy']))
  for sample in result.get('samples', []):
    lines.append(f'source: {sample["source"][:200]!r}\n  reference: '
                 f'{sample["reference"]!r}\n  prediction: '
                 f'{sample["prediction"]!r}')
  return '\n'.join(lines)
