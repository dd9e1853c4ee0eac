r"""Compiled vs op-by-op decoding speed of a config's model (random init).

  python -m benchmarks.decode_speed --config=configs/default.py

Greedy-decodes one prompt with the compiled prefill + while-loop decoder
(median of 3 calls after a compiling one) and with the same code op by op
(`jit=False`), checks that both write the same tokens, and prints one JSON
line: seconds and tokens/s of each, and the ratio.
"""

import json
import time

from absl import flags
import jax
from ml_collections import config_flags

from experiments import cli
from lm.infer import generate
from lm.infer import sampling
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/default.py[:preset].')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 16, 'Prompt tokens.',
                                   lower_bound=1)
_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 32, 'Tokens to write.',
                                   lower_bound=1)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  model_config = ModelConfig.from_config(cli.get_config(_CONFIG).model)
  if not registry.get(model_config.family).generates:
    cli.fail(f'decoding speed is measured on decoder models; this config '
             f'has model.family={model_config.family!r}')
  model = registry.build_model(model_config)
  params = model_params.init_params(model, jax.random.key(0))
  prompt = [[3 + i % (model_config.vocab_size - 3)
             for i in range(_PROMPT_LEN.value)]]
  kwargs = dict(sampling=sampling.SamplingConfig(
      max_new_tokens=_NEW_TOKENS.value, temperature=0.0),
      rng=jax.random.key(0), eos_id=None, max_len=model_config.context_limit)

  def timed(**extra):
    start = time.perf_counter()
    tokens = generate.generate(model, params, prompt, **kwargs, **extra)
    return time.perf_counter() - start, tokens

  first_s, compiled = timed()
  compiled_s = sorted(timed()[0] for _ in range(3))[1]
  eager_s, eager = timed(jit=False)
  count = len(compiled[0])
  print(json.dumps({
      'new_tokens': count, 'prompt_len': _PROMPT_LEN.value,
      'jit_first_call_s': round(first_s, 3),
      'jit_s': round(compiled_s, 4), 'no_jit_s': round(eager_s, 3),
      'jit_tokens_per_s': round(count / compiled_s, 1),
      'no_jit_tokens_per_s': round(count / eager_s, 2),
      'speedup': round(eager_s / compiled_s, 1),
      'same_tokens': compiled == eager}))


if __name__ == '__main__':
  cli.run(main)
