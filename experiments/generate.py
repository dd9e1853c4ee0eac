r"""Continues a prompt with the latest checkpoint of a workdir.

  python -m experiments.generate --workdir=workdirs/default --prompt="ROMEO:" \
      [--max_new_tokens=100 --temperature=0.8 --top_k=40 --top_p=0.95]
  python -m experiments.generate --workdir=workdirs/smollm2 --chat \
      --prompt="What is the capital of France?"

--temperature=0 is greedy decoding. Text is printed as it is sampled.
Decoding is jit-compiled: one prefill
call over the prompt, then a KV-cache loop of one token per step; --no_jit
runs the same code op by op instead. --mesh=1,1,8 runs the model sharded
over 8 devices with tensor parallelism (sizes of the data, fsdp, tensor,
expert axes; see lm/sharding.py). --chat wraps the prompt as a user
message in the instruct model's chat template (imported with its
tokenizer) and prints the assistant's reply.
"""

from absl import flags

from experiments import cli
from lm import restore
from lm import sharding
from lm.data import tokenizers
from lm.infer import generate
from lm.infer import sampling

_DEFAULT_NEW_TOKENS = 200

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by '
                               'experiments/train.py.', required=True)
_PROMPT = flags.DEFINE_string('prompt', None, 'Text to continue.',
                              required=True)
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    'max_new_tokens', None, 'How many tokens to add at most; default: '
    f'{_DEFAULT_NEW_TOKENS}, or as many as fit in the model\'s context after '
    'the prompt.', lower_bound=1)
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, '0 means greedy.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely '
                              'tokens; 0 disables.', lower_bound=0)
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass; 1 disables.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_MESH = flags.DEFINE_list(
    'mesh', [], 'Device mesh sizes (data,fsdp,tensor,expert), e.g. 1,1,8 '
    'for tensor parallelism over 8 devices; empty: one device.')
_NO_JIT = flags.DEFINE_bool(
    'no_jit', False, 'Run decoding op by op, without compiling (to compare '
    'with the compiled path).')
_CHAT = flags.DEFINE_bool('chat', False, "Apply the model's chat template to "
                          'the prompt (instruct models).')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  if not _PROMPT.value:
    cli.fail('--prompt is empty; give some text to continue, e.g. '
             '--prompt="ROMEO:"')
  cli.setup_jax()
  workdir = _WORKDIR.value
  restored = restore.workdir(workdir)
  prompt = _PROMPT.value
  if _CHAT.value:
    if not tokenizers.chat_template(restored.tokenizer):
      cli.fail(f'{workdir} has no chat template (only imported instruct '
               'models do); drop --chat')
    prompt = restored.tokenizer.apply_chat_template(
        [{'role': 'user', 'content': prompt}])
  settings = sampling.SamplingConfig(
      max_new_tokens=_MAX_NEW_TOKENS.value or _default_new_tokens(
          restored, prompt),
      temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value)
  mesh = None
  if _MESH.value:
    try:
      shape = [int(size) for size in _MESH.value]
    except ValueError:
      cli.fail(f'--mesh={",".join(_MESH.value)} must be integers, e.g. '
               '--mesh=1,1,8')
    mesh = sharding.make_mesh(shape)
  print(f'[{workdir} at step {restored.step}]')
  if not _CHAT.value:
    print(prompt, end='', flush=True)
  generate.complete(restored.model_config, restored.params,
                    restored.tokenizer, [prompt], settings, _SEED.value,
                    mesh=mesh, jit=not _NO_JIT.value,
                    stream=_Printer(strip=_CHAT.value))
  print()


class _Printer:
  """Prints each piece of text as it comes; `strip` drops the whitespace a
  chat reply starts with."""

  def __init__(self, strip: bool):
    self._strip = strip

  def __call__(self, text: str):
    if self._strip:
      text = text.lstrip()
      self._strip = not text
    print(text, end='', flush=True)


def _default_new_tokens(restored: restore.Restored, prompt: str) -> int:
  """_DEFAULT_NEW_TOKENS, or fewer where the model's context ends sooner."""
  room = (restored.model_config.max_len
          - len(restored.tokenizer.encode(prompt)))
  if room < 1:
    cli.fail(f'the prompt fills the model\'s context of '
             f'{restored.model_config.max_len} tokens; shorten it')
  return min(_DEFAULT_NEW_TOKENS, room)


if __name__ == '__main__':
  cli.run(main)
