r"""The Kneser-Ney n-gram baseline on a config's data and tokenizer.

  python -m experiments.ngram_baseline --config=configs/default.py --order=4

Counts the train split's token stream (lm/evaluate/ngram.py) and scores
the validation stream exactly as training evaluates a Transformer on it:
the same tokenizer, documents joined with EOS, every token after the first
predicted. Prints one JSON line: loss (nats/token), perplexity,
bits_per_byte, and the time taken.
"""

import json
import math
import time

from absl import flags
from ml_collections import config_flags

from experiments import cli
from lm.data import datasets
from lm.data import pipeline
from lm.evaluate import ngram

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config whose data section to use.')
_ORDER = flags.DEFINE_integer('order', 4, 'n: the longest context is n - 1 '
                              'tokens.')
_DISCOUNT = flags.DEFINE_float('discount', 0.75, 'Kneser-Ney discount D.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  if _ORDER.value < 1 or not 0 < _DISCOUNT.value < 1:
    cli.fail(f'--order must be >= 1 and --discount in (0, 1); got '
             f'{_ORDER.value} and {_DISCOUNT.value}')
  data = cli.get_config(_CONFIG).data
  start = time.perf_counter()
  builder = datasets.get_builder(data.name, data.data_dir or None)
  tokenizer = datasets.get_tokenizer(data.tokenizer, builder, data.vocab_size)
  train, validation = (
      pipeline.tokenize_and_join(datasets.documents(builder, split), tokenizer)
      for split in ('train', 'validation'))
  model = ngram.KneserNey(train, _ORDER.value, tokenizer.vocab_size,
                          _DISCOUNT.value)
  nll = model.stream_nll(validation)
  loss = float(nll.mean())
  print(json.dumps({
      'baseline': f'kneser_ney_{_ORDER.value}gram', 'dataset': data.name,
      'tokenizer': f'{data.tokenizer}:{tokenizer.vocab_size}',
      'train_tokens': len(train), 'validation_tokens': len(nll),
      'loss': round(loss, 4), 'perplexity': round(math.exp(loss), 4),
      'bits_per_byte': round(float(
          nll.sum() / math.log(2)
          / tokenizer.token_bytes()[validation[1:]].sum()), 4),
      'seconds': round(time.perf_counter() - start, 1)}))


if __name__ == '__main__':
  cli.run(main)
